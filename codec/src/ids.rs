//! Identifier newtypes. They are parsed once, at the edge, so the rest of
//! the code never sees an empty or oversized id.

use std::fmt;

use crate::error::CodecError;
use crate::wire::{Field, Out, Reader};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $max:literal, $field:literal) => {
        $(#[$doc])*
        ///
        #[doc = concat!("Between 1 and ", stringify!($max), " bytes of UTF-8 without control characters.")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The longest id, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Parses an id.
            ///
            /// # Errors
            /// [`CodecError::InvalidId`] if it is empty, longer than
            /// [`Self::MAX_LEN`] bytes or contains a control character.
            pub fn new(value: impl Into<String>) -> Result<Self, CodecError> {
                let value = value.into();
                if value.is_empty()
                    || value.len() > Self::MAX_LEN
                    || value.chars().any(char::is_control)
                {
                    return Err(CodecError::InvalidId { field: $field });
                }
                Ok(Self(value))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as bytes (for storage keys).
            pub fn as_bytes(&self) -> &[u8] {
                self.0.as_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = CodecError;
            fn from_str(s: &str) -> Result<Self, CodecError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = CodecError;
            fn try_from(s: &str) -> Result<Self, CodecError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = CodecError;
            fn try_from(s: String) -> Result<Self, CodecError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Field for $name {
            const MIN_LEN: usize = 2;
            fn put<O: Out>(&self, field: &'static str, out: &mut O) -> Result<(), CodecError> {
                out.put_str8(field, &self.0)
            }
            fn get(r: &mut Reader, field: &'static str) -> Result<Self, CodecError> {
                let s = r.str8(field)?;
                Self::new(s).map_err(|_| CodecError::InvalidId { field })
            }
        }

        /// An absent id is encoded as an empty string.
        impl Field for Option<$name> {
            const MIN_LEN: usize = 1;
            fn put<O: Out>(&self, field: &'static str, out: &mut O) -> Result<(), CodecError> {
                match self {
                    Some(id) => out.put_str8(field, &id.0),
                    None => out.put_str8(field, ""),
                }
            }
            fn get(r: &mut Reader, field: &'static str) -> Result<Self, CodecError> {
                let s = r.str8(field)?;
                if s.is_empty() {
                    return Ok(None);
                }
                Ok(Some($name::new(s).map_err(|_| CodecError::InvalidId { field })?))
            }
        }
    };
}

string_id!(
    /// A room (channel, conversation) id.
    RoomId,
    128,
    "room"
);
string_id!(
    /// A user id, as resolved by authentication.
    UserId,
    128,
    "user"
);
string_id!(
    /// A device id, chosen by the client and stable across its restarts.
    DeviceId,
    64,
    "device"
);

/// A room sequence number. Every room numbers its messages 1, 2, 3, ...
/// with no gaps; 0 means "nothing" (the head of an empty room, or an absent
/// reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// "No message": the head of an empty room.
    pub const ZERO: Seq = Seq(0);

    /// The sequence after this one, saturating at `u64::MAX`.
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }

    /// The raw number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Seq {
    fn from(v: u64) -> Self {
        Seq(v)
    }
}

impl Field for Seq {
    const MIN_LEN: usize = 8;
    fn put<O: Out>(&self, _: &'static str, out: &mut O) -> Result<(), CodecError> {
        out.put_u64(self.0);
        Ok(())
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, CodecError> {
        Ok(Seq(r.u64(field)?))
    }
}

/// An optional sequence reference, encoded as a u64 where 0 means absent.
impl Field for Option<Seq> {
    const MIN_LEN: usize = 8;
    fn put<O: Out>(&self, field: &'static str, out: &mut O) -> Result<(), CodecError> {
        match self {
            None => out.put_u64(0),
            Some(Seq(0)) => {
                return Err(CodecError::InvalidValue {
                    field,
                    offset: 0,
                    value: 0,
                })
            }
            Some(Seq(n)) => out.put_u64(*n),
        }
        Ok(())
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, CodecError> {
        let v = r.u64(field)?;
        Ok((v != 0).then_some(Seq(v)))
    }
}
