"""ICE through the sipedge relay with aioice (an independent STUN/TURN/ICE implementation).

Agent A may only use relay candidates (TransportPolicy.RELAY) from the TURN server given on
the command line, with a REST credential; agent B uses host candidates. They exchange
candidates in process, complete ICE, and A sends datagrams that B must receive intact, and
back. Exit 0 on success; prints what happened.

usage: relay_ice.py HOST PORT USERNAME PASSWORD [udp|tls]

With `tls`, A reaches the TURN server over TLS (a `turns:` server; the CA to trust comes
from SSL_CERT_FILE, as for any OpenSSL default context).
"""

import asyncio
import sys

import aioice


async def main(host, port, username, password, mode="udp"):
    a = aioice.Connection(
        ice_controlling=True,
        components=1,
        turn_server=(host, port),
        turn_username=username,
        turn_password=password,
        turn_transport="tcp" if mode == "tls" else "udp",
        turn_ssl=mode == "tls",
        transport_policy=aioice.TransportPolicy.RELAY,
    )
    b = aioice.Connection(ice_controlling=False, components=1)
    await asyncio.wait_for(a.gather_candidates(), 10)
    await asyncio.wait_for(b.gather_candidates(), 10)
    relay = [c for c in a.local_candidates if c.type == "relay"]
    print("A candidates:", [f"{c.type} {c.host}:{c.port}" for c in a.local_candidates])
    if not relay:
        print("no relay candidate")
        return 1
    for c in a.local_candidates:
        await b.add_remote_candidate(c)
    await b.add_remote_candidate(None)
    for c in b.local_candidates:
        await a.add_remote_candidate(c)
    await a.add_remote_candidate(None)
    a.remote_username, a.remote_password = b.local_username, b.local_password
    b.remote_username, b.remote_password = a.local_username, a.local_password
    await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 20)
    for i in range(20):
        payload = bytes([i]) * 172
        await a.send(payload)
        got = await asyncio.wait_for(b.recv(), 5)
        if got != payload:
            print("A->B mismatch at", i)
            return 1
        await b.send(got[::-1])
        back = await asyncio.wait_for(a.recv(), 5)
        if back != payload[::-1]:
            print("B->A mismatch at", i)
            return 1
    print("ICE through the relay: 20 round trips of 172 bytes intact")
    await a.close()
    await b.close()
    return 0


if __name__ == "__main__":
    mode = sys.argv[5] if len(sys.argv) > 5 else "udp"
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], mode)))
