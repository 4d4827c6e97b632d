//! Why the relay refuses a request, and the one mapping of each reason to its STUN error
//! code and reason phrase (RFC 8489 §14.8, RFC 8656 §18). The server decides in these
//! terms; only [`Refused::code`] and [`Refused::reason`] know the numbers.

use super::auth::AuthError;

/// A refusal, answered with an ERROR-CODE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// 400, with what was wrong.
    BadRequest(BadRequest),
    /// 401: no credentials, or the wrong ones (with REALM and a fresh NONCE).
    Unauthorized,
    /// 403: the peer policy refuses the peer for the allocation's zone.
    Forbidden,
    /// 420: a comprehension-required attribute the relay does not honour.
    UnknownAttribute,
    /// 437: no allocation on this 5-tuple (or one already, for an Allocate).
    AllocationMismatch,
    /// 438: a nonce of ours, expired or issued to another address.
    StaleNonce,
    /// 440: the relay serves the other address family.
    AddressFamilyNotSupported,
    /// 441: a request on an allocation with another credential than the one that made it.
    WrongCredentials,
    /// 442: only UDP relays.
    UnsupportedTransportProtocol,
    /// 443: the peer's family is not the relay's.
    PeerAddressFamilyMismatch,
    /// 486: the user's or the source's quota is full.
    AllocationQuotaReached,
    /// 508: the relay's capacity (total, ports, permissions, channels, reservations) is
    /// full, or a reservation token names nothing.
    InsufficientCapacity,
}

/// What was wrong with a request answered 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadRequest {
    UnknownMethod,
    /// USERNAME, REALM or NONCE present but unusable.
    Credentials,
    MissingRequestedTransport,
    EvenPortWithReservationToken,
    BothAddressFamilyAttributes,
    BadAdditionalAddressFamily,
    BadRequestedAddressFamily,
    BadReservationToken,
    BadPeerAddress,
    MissingPeerAddress,
    OnePeerAddress,
    BadPeerPort,
    BadChannelNumber,
    ChannelBoundToAnotherPeer,
    PeerBoundToAnotherChannel,
}

impl Refused {
    pub fn code(self) -> u16 {
        match self {
            Refused::BadRequest(_) => 400,
            Refused::Unauthorized => 401,
            Refused::Forbidden => 403,
            Refused::UnknownAttribute => 420,
            Refused::AllocationMismatch => 437,
            Refused::StaleNonce => 438,
            Refused::AddressFamilyNotSupported => 440,
            Refused::WrongCredentials => 441,
            Refused::UnsupportedTransportProtocol => 442,
            Refused::PeerAddressFamilyMismatch => 443,
            Refused::AllocationQuotaReached => 486,
            Refused::InsufficientCapacity => 508,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Refused::BadRequest(why) => why.reason(),
            Refused::Unauthorized => "Unauthorized",
            Refused::Forbidden => "Forbidden",
            Refused::UnknownAttribute => "Unknown Attribute",
            Refused::AllocationMismatch => "Allocation Mismatch",
            Refused::StaleNonce => "Stale Nonce",
            Refused::AddressFamilyNotSupported => "Address Family not Supported",
            Refused::WrongCredentials => "Wrong Credentials",
            Refused::UnsupportedTransportProtocol => "Unsupported Transport Protocol",
            Refused::PeerAddressFamilyMismatch => "Peer Address Family Mismatch",
            Refused::AllocationQuotaReached => "Allocation Quota Reached",
            Refused::InsufficientCapacity => "Insufficient Capacity",
        }
    }
}

impl BadRequest {
    fn reason(self) -> &'static str {
        match self {
            BadRequest::UnknownMethod => "Unknown Method",
            BadRequest::Credentials => "Bad Request",
            BadRequest::MissingRequestedTransport => "Missing REQUESTED-TRANSPORT",
            BadRequest::EvenPortWithReservationToken => "EVEN-PORT With RESERVATION-TOKEN",
            BadRequest::BothAddressFamilyAttributes => "Both Address Family Attributes",
            BadRequest::BadAdditionalAddressFamily => "Bad ADDITIONAL-ADDRESS-FAMILY",
            BadRequest::BadRequestedAddressFamily => "Bad REQUESTED-ADDRESS-FAMILY",
            BadRequest::BadReservationToken => "Bad RESERVATION-TOKEN",
            BadRequest::BadPeerAddress => "Bad XOR-PEER-ADDRESS",
            BadRequest::MissingPeerAddress => "Missing XOR-PEER-ADDRESS",
            BadRequest::OnePeerAddress => "One XOR-PEER-ADDRESS",
            BadRequest::BadPeerPort => "Bad Peer Port",
            BadRequest::BadChannelNumber => "Bad CHANNEL-NUMBER",
            BadRequest::ChannelBoundToAnotherPeer => "Channel Bound To Another Peer",
            BadRequest::PeerBoundToAnotherChannel => "Peer Bound To Another Channel",
        }
    }
}

impl From<AuthError> for Refused {
    fn from(e: AuthError) -> Refused {
        match e {
            AuthError::Unauthorized => Refused::Unauthorized,
            AuthError::StaleNonce => Refused::StaleNonce,
            AuthError::BadRequest => Refused::BadRequest(BadRequest::Credentials),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_rfc_classes_and_auth_errors_keep_theirs() {
        for e in [
            AuthError::Unauthorized,
            AuthError::StaleNonce,
            AuthError::BadRequest,
        ] {
            assert_eq!(Refused::from(e).code(), e.code());
        }
        assert_eq!(Refused::BadRequest(BadRequest::BadPeerPort).code(), 400);
        assert_eq!(
            Refused::InsufficientCapacity.reason(),
            "Insufficient Capacity"
        );
    }
}
