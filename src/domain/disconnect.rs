/// Why the server ends (or refuses) a WebSocket: each reason carries its close
/// code and the text clients see, so the pair is written in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client left, or closed first.
    Normal,
    /// The server is draining; the client should reconnect elsewhere.
    ShuttingDown,
    /// Nothing heard from the client for two ping intervals.
    PingTimeout,
    /// Writing to the client failed.
    WriteFailed,
    /// The token was missing, malformed, expired, revoked or names no user.
    InvalidToken,
    /// The token was revoked (logout) while the connection was open.
    TokenRevoked,
    /// The token expired (and the grace after it ran out) without being
    /// renewed in-band.
    TokenExpired,
    /// Connected without a token, the client sent something other than an
    /// `auth` frame first.
    AuthExpected,
    /// Connected without a token, the client sent no `auth` frame in time.
    AuthTimeout,
    /// A frame exceeded the size limit.
    TooBig,
    /// The client read too slowly and its outgoing queue filled up.
    TooSlow,
    /// A connection that acknowledges held too many messages unacknowledged.
    TooManyUnacknowledged,
    /// The user, or the client's address, holds as many WebSockets as allowed.
    TooManyConnections,
    /// The client kept sending frames over its rate limit after being told.
    RateLimited,
    /// A backend the connection needs is unreachable.
    Unavailable,
}

impl Disconnect {
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::ShuttingDown | Self::PingTimeout | Self::WriteFailed => 1001,
            Self::InvalidToken
            | Self::TokenRevoked
            | Self::TokenExpired
            | Self::AuthExpected
            | Self::AuthTimeout
            | Self::RateLimited => 1008,
            Self::TooBig => 1009,
            Self::Unavailable => 1011,
            Self::TooSlow | Self::TooManyUnacknowledged | Self::TooManyConnections => 1013,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::Normal => "",
            Self::ShuttingDown => "server shutting down",
            Self::PingTimeout => "ping timeout",
            Self::WriteFailed => "write failed",
            Self::InvalidToken => "invalid or expired token",
            Self::TokenRevoked => "token revoked",
            Self::TokenExpired => "token expired; renew it with an auth frame",
            Self::AuthExpected => "the first frame must be {\"type\": \"auth\", \"token\"}",
            Self::AuthTimeout => "no auth frame in time",
            Self::TooBig => "message too big",
            Self::TooSlow => "too slow: outgoing queue full",
            Self::TooManyUnacknowledged => {
                "too many unacknowledged messages; acknowledge, then reconnect"
            }
            Self::TooManyConnections => "too many connections",
            Self::RateLimited => "rate limit exceeded",
            Self::Unavailable => "service temporarily unavailable",
        }
    }
}
