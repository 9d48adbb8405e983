//! Primitive field readers and writers shared by every frame body.
//!
//! Every reader checks the bytes it needs against what is left of the frame
//! body before it touches them, so a hostile length can never make the
//! decoder read past the body or allocate more than the body holds.

use bytes::{Buf, BufMut, Bytes};

use crate::error::CodecError;

/// A cursor over one frame body. The body was already bounded by the frame
/// length check, so every allocation made from it is bounded too.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
    body_len: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        let body_len = buf.len();
        Self { buf, body_len }
    }

    /// Offset of the next unread byte, counted from the start of the body.
    pub(crate) fn offset(&self) -> usize {
        self.body_len - self.buf.len()
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), CodecError> {
        if self.buf.len() < n {
            Err(CodecError::Truncated {
                field,
                offset: self.offset(),
            })
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, CodecError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        self.need(8, field)?;
        Ok(self.buf.get_u64())
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, CodecError> {
        let offset = self.offset();
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(CodecError::InvalidValue {
                field,
                offset,
                value: u64::from(value),
            }),
        }
    }

    /// The `len` bytes after a length prefix; `offset` is where the field
    /// (its prefix) starts, as reported in errors.
    fn raw(&mut self, len: usize, field: &'static str, offset: usize) -> Result<Bytes, CodecError> {
        if self.buf.len() < len {
            return Err(CodecError::Truncated { field, offset });
        }
        Ok(self.buf.split_to(len))
    }

    fn utf8(
        &mut self,
        len: usize,
        field: &'static str,
        offset: usize,
    ) -> Result<String, CodecError> {
        let raw = self.raw(len, field, offset)?;
        String::from_utf8(raw.to_vec()).map_err(|_| CodecError::InvalidUtf8 { field, offset })
    }

    /// A string with a one-byte length prefix (identifiers).
    pub(crate) fn str8(&mut self, field: &'static str) -> Result<String, CodecError> {
        let offset = self.offset();
        let len = usize::from(self.u8(field)?);
        self.utf8(len, field, offset)
    }

    /// A string with a two-byte length prefix (names, topics, tokens, text).
    pub(crate) fn str16(&mut self, field: &'static str) -> Result<String, CodecError> {
        let offset = self.offset();
        let len = usize::from(self.u16(field)?);
        self.utf8(len, field, offset)
    }

    /// Opaque bytes with a four-byte length prefix. Zero-copy: the result
    /// shares the frame's buffer.
    pub(crate) fn bytes32(&mut self, field: &'static str) -> Result<Bytes, CodecError> {
        let offset = self.offset();
        let len = self.u32(field)?;
        let len = usize::try_from(len).map_err(|_| CodecError::Truncated { field, offset })?;
        self.raw(len, field, offset)
    }

    /// A list count. Each item takes at least `min_item_len` bytes, so a
    /// count that cannot fit in the rest of the body is rejected before any
    /// vector is allocated for it.
    pub(crate) fn count(
        &mut self,
        field: &'static str,
        min_item_len: usize,
    ) -> Result<usize, CodecError> {
        let offset = self.offset();
        let count = usize::from(self.u16(field)?);
        let needed = count.saturating_mul(min_item_len.max(1));
        if needed > self.remaining() {
            return Err(CodecError::Truncated { field, offset });
        }
        Ok(count)
    }
}

/// Where encoded fields go: a real buffer, or a counter that measures the
/// encoded length with the very same code path (so the two never disagree).
pub(crate) trait Out {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_slice(&mut self, v: &[u8]);

    fn put_bool(&mut self, v: bool) {
        self.put_u8(u8::from(v));
    }

    fn put_str8(&mut self, field: &'static str, v: &str) -> Result<(), CodecError> {
        let len = u8::try_from(v.len()).map_err(|_| CodecError::FieldTooLong {
            field,
            len: v.len(),
            max: usize::from(u8::MAX),
        })?;
        self.put_u8(len);
        self.put_slice(v.as_bytes());
        Ok(())
    }

    fn put_str16(&mut self, field: &'static str, v: &str) -> Result<(), CodecError> {
        let len = u16::try_from(v.len()).map_err(|_| CodecError::FieldTooLong {
            field,
            len: v.len(),
            max: usize::from(u16::MAX),
        })?;
        self.put_u16(len);
        self.put_slice(v.as_bytes());
        Ok(())
    }

    fn put_bytes32(&mut self, field: &'static str, v: &[u8]) -> Result<(), CodecError> {
        let len = u32::try_from(v.len()).map_err(|_| CodecError::FieldTooLong {
            field,
            len: v.len(),
            max: u32::MAX as usize,
        })?;
        self.put_u32(len);
        self.put_slice(v);
        Ok(())
    }

    fn put_count(&mut self, field: &'static str, n: usize) -> Result<(), CodecError> {
        let n = u16::try_from(n).map_err(|_| CodecError::FieldTooLong {
            field,
            len: n,
            max: usize::from(u16::MAX),
        })?;
        self.put_u16(n);
        Ok(())
    }
}

/// Counts bytes instead of writing them.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Out for Counter {
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn put_u64(&mut self, _: u64) {
        self.0 += 8;
    }
    fn put_slice(&mut self, v: &[u8]) {
        self.0 += v.len();
    }
}

/// Writes into any `BufMut`.
pub(crate) struct Writer<'a, B: BufMut>(pub(crate) &'a mut B);

impl<B: BufMut> Out for Writer<'_, B> {
    fn put_u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.0.put_u16(v);
    }
    fn put_u32(&mut self, v: u32) {
        self.0.put_u32(v);
    }
    fn put_u64(&mut self, v: u64) {
        self.0.put_u64(v);
    }
    fn put_slice(&mut self, v: &[u8]) {
        self.0.put_slice(v);
    }
}

/// A type that is encoded as a run of fields inside some frame body.
pub(crate) trait Field: Sized {
    /// The fewest bytes one encoded value can take; used to bound list counts.
    const MIN_LEN: usize;
    /// Appends the value. `field` names it in errors.
    fn put<O: Out>(&self, field: &'static str, out: &mut O) -> Result<(), CodecError>;
    /// Reads the value. `field` names it in errors.
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, CodecError>;
}

macro_rules! int_field {
    ($t:ty, $len:literal, $put:ident, $get:ident) => {
        impl Field for $t {
            const MIN_LEN: usize = $len;
            fn put<O: Out>(&self, _: &'static str, out: &mut O) -> Result<(), CodecError> {
                out.$put(*self);
                Ok(())
            }
            fn get(r: &mut Reader, field: &'static str) -> Result<Self, CodecError> {
                r.$get(field)
            }
        }
    };
}

int_field!(u8, 1, put_u8, u8);
int_field!(u16, 2, put_u16, u16);
int_field!(u32, 4, put_u32, u32);
int_field!(u64, 8, put_u64, u64);
int_field!(bool, 1, put_bool, bool);

/// Free text: UTF-8 with a two-byte length prefix.
impl Field for String {
    const MIN_LEN: usize = 2;
    fn put<O: Out>(&self, field: &'static str, out: &mut O) -> Result<(), CodecError> {
        out.put_str16(field, self)
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, CodecError> {
        r.str16(field)
    }
}

/// Opaque payloads: a four-byte length prefix.
impl Field for Bytes {
    const MIN_LEN: usize = 4;
    fn put<O: Out>(&self, field: &'static str, out: &mut O) -> Result<(), CodecError> {
        out.put_bytes32(field, self)
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, CodecError> {
        r.bytes32(field)
    }
}

/// Lists: a two-byte item count, then the items.
impl<T: Field> Field for Vec<T> {
    const MIN_LEN: usize = 2;
    fn put<O: Out>(&self, field: &'static str, out: &mut O) -> Result<(), CodecError> {
        out.put_count(field, self.len())?;
        for item in self {
            item.put(field, out)?;
        }
        Ok(())
    }
    fn get(r: &mut Reader, field: &'static str) -> Result<Self, CodecError> {
        let count = r.count(field, T::MIN_LEN)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(T::get(r, field)?);
        }
        Ok(items)
    }
}

/// Declares a plain struct whose wire form is its fields in order.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $crate::wire::Field for $name {
            const MIN_LEN: usize = 0 $( + <$ty as $crate::wire::Field>::MIN_LEN )*;

            #[allow(unused_variables)]
            fn put<O: $crate::wire::Out>(
                &self,
                _: &'static str,
                out: &mut O,
            ) -> Result<(), $crate::error::CodecError> {
                $( $crate::wire::Field::put(&self.$field, stringify!($field), out)?; )*
                Ok(())
            }

            #[allow(unused_variables)]
            fn get(
                r: &mut $crate::wire::Reader,
                _: &'static str,
            ) -> Result<Self, $crate::error::CodecError> {
                Ok(Self {
                    $( $field: <$ty as $crate::wire::Field>::get(r, stringify!($field))?, )*
                })
            }
        }
    };
}
pub(crate) use wire_struct;

/// Declares a one-byte enum whose unknown values are rejected.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )*
        }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
        }

        impl $crate::wire::Field for $name {
            const MIN_LEN: usize = 1;
            fn put<O: $crate::wire::Out>(
                &self,
                _: &'static str,
                out: &mut O,
            ) -> Result<(), $crate::error::CodecError> {
                out.put_u8(*self as u8);
                Ok(())
            }
            fn get(
                r: &mut $crate::wire::Reader,
                field: &'static str,
            ) -> Result<Self, $crate::error::CodecError> {
                let offset = r.offset();
                match r.u8(field)? {
                    $( $value => Ok($name::$variant), )*
                    value => Err($crate::error::CodecError::InvalidValue {
                        field,
                        offset,
                        value: u64::from(value),
                    }),
                }
            }
        }
    };
}
pub(crate) use wire_enum;
