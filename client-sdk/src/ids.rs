//! Conversions that let calls take `"general"` as well as a parsed
//! [`RoomId`].

use confab_codec::{RoomId, UserId};

use crate::error::ClientError;

/// Anything that names a room: a [`RoomId`], or a string parsed into one.
///
/// ```no_run
/// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
/// use confab_client::confab_codec::RoomId;
///
/// client.publish("general", "by name").await?;
/// let room = RoomId::new("general")?;
/// client.publish(&room, "by id").await?;
/// client.publish(String::from("general"), "by owned name").await?;
/// # Ok(()) }
/// ```
pub trait IntoRoomId {
    /// The room id.
    ///
    /// # Errors
    /// [`ClientError::Codec`] if the string is not a valid room id.
    fn into_room_id(self) -> Result<RoomId, ClientError>;
}

/// Anything that names a user: a [`UserId`], or a string parsed into one.
///
/// ```no_run
/// # async fn run(client: confab_client::Client) -> Result<(), confab_client::ClientError> {
/// client.invite("project-x", "bob").await?;
/// # Ok(()) }
/// ```
pub trait IntoUserId {
    /// The user id.
    ///
    /// # Errors
    /// [`ClientError::Codec`] if the string is not a valid user id.
    fn into_user_id(self) -> Result<UserId, ClientError>;
}

macro_rules! into_id {
    ($trait:ident, $method:ident, $id:ident) => {
        impl $trait for $id {
            fn $method(self) -> Result<$id, ClientError> {
                Ok(self)
            }
        }

        impl $trait for &$id {
            fn $method(self) -> Result<$id, ClientError> {
                Ok(self.clone())
            }
        }

        impl $trait for &str {
            fn $method(self) -> Result<$id, ClientError> {
                Ok($id::new(self)?)
            }
        }

        impl $trait for String {
            fn $method(self) -> Result<$id, ClientError> {
                Ok($id::new(self)?)
            }
        }

        impl $trait for &String {
            fn $method(self) -> Result<$id, ClientError> {
                Ok($id::new(self.as_str())?)
            }
        }
    };
}

into_id!(IntoRoomId, into_room_id, RoomId);
into_id!(IntoUserId, into_user_id, UserId);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn conversions() {
        let r = RoomId::new("general").unwrap();
        assert_eq!("general".into_room_id().unwrap(), r);
        assert_eq!(String::from("general").into_room_id().unwrap(), r);
        assert_eq!((&r).into_room_id().unwrap(), r);
        assert!("".into_room_id().is_err());
        assert!("bad\nid".into_user_id().is_err());
        assert_eq!("bob".into_user_id().unwrap().as_str(), "bob");
    }
}
