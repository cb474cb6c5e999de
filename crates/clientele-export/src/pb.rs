//! A minimal protobuf writer: exactly the wire types OTLP uses (varint, 64-bit, length-
//! delimited, 32-bit), no reflection, no code generation. The messages built with it are checked
//! against the official OTLP definitions by decoding them with the `opentelemetry-proto` Python
//! package in the end-to-end tests.

#[derive(Debug, Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.raw_varint((u64::from(field) << 3) | u64::from(wire));
    }

    /// `uint32`, `uint64`, enums and `bool`. Zero is the default and is not written.
    pub fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, VARINT);
            self.raw_varint(v);
        }
    }

    /// An `int64` inside a `oneof`, written even when 0 so the member is present.
    pub fn int64_always(&mut self, field: u32, v: i64) {
        self.key(field, VARINT);
        self.raw_varint(v as u64);
    }

    /// `sfixed64` inside a `oneof`, written even when 0.
    pub fn sfixed64_always(&mut self, field: u32, v: i64) {
        self.key(field, I64);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A `fixed64` written even when 0.
    pub fn fixed64_always(&mut self, field: u32, v: u64) {
        self.key(field, I64);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn fixed64(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, I64);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    pub fn fixed32(&mut self, field: u32, v: u32) {
        if v != 0 {
            self.key(field, I32);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// A `double`; `always` writes it even when 0 (for `oneof` members and `optional` fields,
    /// where presence matters).
    pub fn double(&mut self, field: u32, v: f64, always: bool) {
        if always || v != 0.0 {
            self.key(field, I64);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    pub fn bytes(&mut self, field: u32, v: &[u8]) {
        if !v.is_empty() {
            self.bytes_always(field, v);
        }
    }

    /// Length-delimited, written even when empty (an empty sub-message still marks presence).
    pub fn bytes_always(&mut self, field: u32, v: &[u8]) {
        self.key(field, LEN);
        self.raw_varint(v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    pub fn string(&mut self, field: u32, v: &str) {
        self.bytes(field, v.as_bytes());
    }

    /// A string inside a `oneof`, written even when empty.
    pub fn string_always(&mut self, field: u32, v: &str) {
        self.bytes_always(field, v.as_bytes());
    }

    /// A sub-message built by `f`.
    pub fn message(&mut self, field: u32, f: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::new();
        f(&mut inner);
        self.bytes_always(field, &inner.buf);
    }

    /// `repeated fixed64`, packed (proto3's default for scalars).
    pub fn packed_fixed64(&mut self, field: u32, vs: &[u64]) {
        if vs.is_empty() {
            return;
        }
        self.key(field, LEN);
        self.raw_varint((vs.len() * 8) as u64);
        for v in vs {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// `repeated double`, packed.
    pub fn packed_double(&mut self, field: u32, vs: &[f64]) {
        if vs.is_empty() {
            return;
        }
        self.key(field, LEN);
        self.raw_varint((vs.len() * 8) as u64);
        for v in vs {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings() {
        // The protobuf documentation's example: field 1 = 150 → 08 96 01.
        let mut w = Writer::new();
        w.uint(1, 150);
        assert_eq!(w.buf, [0x08, 0x96, 0x01]);
        // Field 2 = "testing" → 12 07 74 65 73 74 69 6e 67.
        let mut w = Writer::new();
        w.string(2, "testing");
        assert_eq!(w.buf, b"\x12\x07testing");
        // A negative int64 takes ten bytes.
        let mut w = Writer::new();
        w.int64_always(3, -1);
        assert_eq!(w.buf.len(), 11);
        let mut w = Writer::new();
        w.fixed64(7, 1);
        assert_eq!(w.buf, [0x39, 1, 0, 0, 0, 0, 0, 0, 0]);
        let mut w = Writer::new();
        w.message(3, |m| m.uint(1, 1));
        assert_eq!(w.buf, [0x1a, 0x02, 0x08, 0x01]);
    }
}
