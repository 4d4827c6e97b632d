//! The tokio shell: sockets, tasks, clocks. It moves bytes between connections and the core.
