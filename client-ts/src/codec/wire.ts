/**
 * Primitive readers and writers shared by every frame body, and the field
 * types frames are built from.
 *
 * Every reader checks the bytes it needs against what is left of the body
 * before it touches them, so a hostile length can never make the decoder
 * read past the body or allocate more than the body holds.
 *
 * @module
 */

import { CodecError } from './errors.js';

const UTF8_DECODER = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const UTF8_ENCODER = new TextEncoder();

/** Largest u64, as a bigint. */
export const U64_MAX = (1n << 64n) - 1n;

/** Code points of Unicode general category Cc (protocol 4.1). */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/u;

/** A cursor over one frame body. */
export class Reader {
  private pos = 0;
  private readonly view: DataView;

  constructor(private readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  /** Offset of the next unread byte, from the start of the body. */
  offset(): number {
    return this.pos;
  }

  /** Bytes not read yet. */
  remaining(): number {
    return this.buf.length - this.pos;
  }

  /** The next byte without consuming it, or `undefined` at the end. */
  peek(): number | undefined {
    return this.buf[this.pos];
  }

  /** Everything not read yet (a copy). */
  rest(): Uint8Array {
    const out = this.buf.slice(this.pos);
    this.pos = this.buf.length;
    return out;
  }

  private need(n: number, field: string, offset = this.pos): void {
    if (this.remaining() < n) {
      throw new CodecError('Truncated', `field \`${field}\` is truncated at body offset ${offset}`, field, offset);
    }
  }

  u8(field: string): number {
    this.need(1, field);
    return this.view.getUint8(this.pos++);
  }

  u16(field: string): number {
    this.need(2, field);
    const v = this.view.getUint16(this.pos);
    this.pos += 2;
    return v;
  }

  u32(field: string): number {
    this.need(4, field);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  u64(field: string): bigint {
    this.need(8, field);
    const v = this.view.getBigUint64(this.pos);
    this.pos += 8;
    return v;
  }

  bool(field: string): boolean {
    const offset = this.pos;
    const v = this.u8(field);
    if (v > 1) {
      throw invalidValue(field, offset, v);
    }
    return v === 1;
  }

  /** `len` raw bytes (a copy, so the result never pins a large buffer). */
  raw(len: number, field: string, offset: number): Uint8Array {
    this.need(len, field, offset);
    const out = this.buf.slice(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }

  private utf8(len: number, field: string, offset: number): string {
    this.need(len, field, offset);
    const bytes = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    try {
      return UTF8_DECODER.decode(bytes);
    } catch {
      throw new CodecError('InvalidUtf8', `field \`${field}\` at body offset ${offset} is not valid UTF-8`, field, offset);
    }
  }

  /** A string with a one-byte length prefix (identifiers). */
  str8(field: string): string {
    const offset = this.pos;
    return this.utf8(this.u8(field), field, offset);
  }

  /** A string with a two-byte length prefix (text). */
  str16(field: string): string {
    const offset = this.pos;
    return this.utf8(this.u16(field), field, offset);
  }

  /** Opaque bytes with a four-byte length prefix. */
  bytes32(field: string): Uint8Array {
    const offset = this.pos;
    return this.raw(this.u32(field), field, offset);
  }

  /**
   * A list count. Each item takes at least `minItemLen` bytes, so a count
   * that cannot fit in the rest of the body is refused before anything is
   * allocated for it.
   */
  count(field: string, minItemLen: number): number {
    const offset = this.pos;
    const count = this.u16(field);
    if (count * Math.max(minItemLen, 1) > this.remaining()) {
      throw new CodecError('Truncated', `list \`${field}\` of ${count} items cannot fit in the body`, field, offset);
    }
    return count;
  }
}

/** A growable output buffer. */
export class Writer {
  private buf = new Uint8Array(64);
  private view = new DataView(this.buf.buffer);
  private len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  /** Bytes written so far. */
  length(): number {
    return this.len;
  }

  /** The written bytes (a view of the buffer). */
  finish(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }

  u8(v: number): void {
    this.reserve(1);
    this.view.setUint8(this.len, v);
    this.len += 1;
  }

  u16(v: number): void {
    this.reserve(2);
    this.view.setUint16(this.len, v);
    this.len += 2;
  }

  u32(v: number): void {
    this.reserve(4);
    this.view.setUint32(this.len, v);
    this.len += 4;
  }

  u64(v: bigint): void {
    this.reserve(8);
    this.view.setBigUint64(this.len, v);
    this.len += 8;
  }

  /** Overwrites a u32 written earlier (the header's length). */
  patchU32(at: number, v: number): void {
    this.view.setUint32(at, v);
  }

  bytes(v: Uint8Array): void {
    this.reserve(v.length);
    this.buf.set(v, this.len);
    this.len += v.length;
  }
}

/** The error for a value outside its allowed set. */
export function invalidValue(field: string, offset: number, value: number | bigint | string): CodecError {
  return new CodecError(
    'InvalidValue',
    `field \`${field}\` at body offset ${offset} has invalid value ${String(value)}`,
    field,
    offset,
  );
}

/** UTF-8 bytes of a string. A lone surrogate cannot be sent: it is refused. */
export function utf8(field: string, v: string): Uint8Array {
  if (!v.isWellFormed()) {
    throw new CodecError('InvalidUtf8', `field \`${field}\` holds a lone surrogate`, field);
  }
  return UTF8_ENCODER.encode(v);
}

/** Whether `v` is a valid identifier of at most `max` bytes (protocol 4.1). */
export function isValidId(v: string, max: number): boolean {
  if (typeof v !== 'string' || v.length === 0 || !v.isWellFormed() || CONTROL.test(v)) return false;
  const len = UTF8_ENCODER.encode(v).length;
  return len >= 1 && len <= max;
}

/**
 * One field type: how a value is read, written, and how its smallest
 * encoding bounds list counts.
 */
export interface FieldType<T> {
  /** The fewest bytes one encoded value takes. */
  readonly minLen: number;
  get(r: Reader, field: string): T;
  put(w: Writer, v: T, field: string): void;
  /** The value in the JSON form of the shared test vectors (`codec/tests/vectors`). */
  toJson(v: T): Json;
  /** The value from its JSON form; throws on a value of the wrong shape. */
  fromJson(j: Json, field: string): T;
}

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function badJson(field: string, j: Json): CodecError {
  return new CodecError('InvalidValue', `field \`${field}\`: unexpected JSON ${JSON.stringify(j)}`, field);
}

function jsonNumber(j: Json, f: string): number {
  if (typeof j !== 'number') throw badJson(f, j);
  return j;
}

function jsonString(j: Json, f: string): string {
  if (typeof j !== 'string') throw badJson(f, j);
  return j;
}

function jsonU64(j: Json, f: string): bigint {
  if (typeof j !== 'string' || !/^[0-9]+$/.test(j)) throw badJson(f, j);
  return BigInt(j);
}

/** Lower-case hex of bytes. */
export function toHex(b: Uint8Array): string {
  let out = '';
  for (const x of b) out += x.toString(16).padStart(2, '0');
  return out;
}

/** Bytes of a hex string (whitespace and `_` ignored). */
export function fromHex(h: string): Uint8Array {
  const clean = h.replace(/[\s_]/g, '');
  if (clean.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(clean)) {
    throw new CodecError('InvalidValue', `not a hex string: ${h.slice(0, 40)}`);
  }
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** `fooBarUs` -> `foo_bar_us`. */
export function snakeCase(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

function intField(bits: 8 | 16 | 32): FieldType<number> {
  const max = 2 ** bits - 1;
  return {
    minLen: bits / 8,
    get: (r, f) => (bits === 8 ? r.u8(f) : bits === 16 ? r.u16(f) : r.u32(f)),
    put: (w, v, f) => {
      if (!Number.isInteger(v) || v < 0 || v > max) throw invalidValue(f, w.length(), v);
      if (bits === 8) w.u8(v);
      else if (bits === 16) w.u16(v);
      else w.u32(v);
    },
    toJson: (v) => v,
    fromJson: jsonNumber,
  };
}

/** `u8`. */
export const u8 = intField(8);
/** `u16`. */
export const u16 = intField(16);
/** `u32`. */
export const u32 = intField(32);

/** `u64`, as a bigint (every value exact). */
export const u64: FieldType<bigint> = {
  minLen: 8,
  get: (r, f) => r.u64(f),
  put: (w, v, f) => {
    if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) throw invalidValue(f, w.length(), String(v));
    w.u64(v);
  },
  toJson: (v) => v.toString(),
  fromJson: jsonU64,
};

/** `Seq?`: 0 on the wire is absent (`null`). A present 0 cannot be written. */
export const seqOpt: FieldType<bigint | null> = {
  minLen: 8,
  get: (r, f) => {
    const v = r.u64(f);
    return v === 0n ? null : v;
  },
  put: (w, v, f) => {
    if (v === null) {
      w.u64(0n);
    } else {
      if (v === 0n) throw invalidValue(f, w.length(), '0 (write null for absent)');
      u64.put(w, v, f);
    }
  },
  toJson: (v) => (v === null ? null : v.toString()),
  fromJson: (j, f) => (j === null ? null : jsonU64(j, f)),
};

/** `bool`. */
export const bool: FieldType<boolean> = {
  minLen: 1,
  get: (r, f) => r.bool(f),
  put: (w, v, f) => {
    if (typeof v !== 'boolean') throw invalidValue(f, w.length(), String(v));
    w.u8(v ? 1 : 0);
  },
  toJson: (v) => v,
  fromJson: (j, f) => {
    if (typeof j !== 'boolean') throw badJson(f, j);
    return j;
  },
};

/** `text`: u16 length + UTF-8. */
export const text: FieldType<string> = {
  minLen: 2,
  get: (r, f) => r.str16(f),
  put: (w, v, f) => {
    const b = utf8(f, v);
    if (b.length > 0xffff) {
      throw new CodecError('FieldTooLong', `field \`${f}\` is ${b.length} bytes long; at most 65535 fit`, f);
    }
    w.u16(b.length);
    w.bytes(b);
  },
  toJson: (v) => v,
  fromJson: jsonString,
};

/** `bytes`: u32 length + opaque bytes. */
export const bytes: FieldType<Uint8Array> = {
  minLen: 4,
  get: (r, f) => r.bytes32(f),
  put: (w, v, f) => {
    if (!(v instanceof Uint8Array)) throw invalidValue(f, w.length(), 'not a Uint8Array');
    w.u32(v.length);
    w.bytes(v);
  },
  toJson: (v) => toHex(v),
  fromJson: (j, f) => fromHex(jsonString(j, f)),
};

/** An identifier (`RoomId`, `UserId`: max 128 bytes; `DeviceId`: 64). */
export function id(max: number): FieldType<string> {
  return {
    minLen: 2,
    get: (r, f) => {
      const offset = r.offset();
      const s = r.str8(f);
      if (!isValidId(s, max)) {
        throw new CodecError('InvalidId', `field \`${f}\` at body offset ${offset} is not a valid identifier`, f, offset);
      }
      return s;
    },
    put: (w, v, f) => {
      if (!isValidId(v, max)) {
        throw new CodecError('InvalidId', `field \`${f}\` is not a valid identifier`, f);
      }
      const b = UTF8_ENCODER.encode(v);
      w.u8(b.length);
      w.bytes(b);
    },
    toJson: (v) => v,
    fromJson: jsonString,
  };
}

/** An optional identifier: length 0 is absent (`null`). */
export function optId(max: number): FieldType<string | null> {
  const inner = id(max);
  return {
    minLen: 1,
    get: (r, f) => {
      if (r.peek() === 0) {
        r.u8(f);
        return null;
      }
      return inner.get(r, f);
    },
    put: (w, v, f) => {
      if (v === null) w.u8(0);
      else inner.put(w, v, f);
    },
    toJson: (v) => v,
    fromJson: (j, f) => (j === null ? null : jsonString(j, f)),
  };
}

/** `list<T>`: u16 count + items. */
export function list<T>(item: FieldType<T>): FieldType<T[]> {
  return {
    minLen: 2,
    get: (r, f) => {
      const n = r.count(f, item.minLen);
      const out: T[] = [];
      for (let i = 0; i < n; i++) out.push(item.get(r, f));
      return out;
    },
    put: (w, v, f) => {
      if (!Array.isArray(v)) throw invalidValue(f, w.length(), 'not an array');
      if (v.length > 0xffff) {
        throw new CodecError('FieldTooLong', `list \`${f}\` has ${v.length} items; at most 65535 fit`, f);
      }
      w.u16(v.length);
      for (const x of v) item.put(w, x, f);
    },
    toJson: (v) => v.map((x) => item.toJson(x)),
    fromJson: (j, f) => {
      if (!Array.isArray(j)) throw badJson(f, j);
      return j.map((x) => item.fromJson(x, f));
    },
  };
}

/** A one-byte closed enumeration: names on the API side, numbers on the wire. */
export function enumField<N extends string>(values: Record<N, number>): FieldType<N> {
  const byValue = new Map<number, N>();
  for (const [name, value] of Object.entries(values) as [N, number][]) byValue.set(value, name);
  return {
    minLen: 1,
    get: (r, f) => {
      const offset = r.offset();
      const v = r.u8(f);
      const name = byValue.get(v);
      if (name === undefined) throw invalidValue(f, offset, v);
      return name;
    },
    put: (w, v, f) => {
      const n = Object.prototype.hasOwnProperty.call(values, v) ? values[v] : undefined;
      if (n === undefined) throw invalidValue(f, w.length(), String(v));
      w.u8(n);
    },
    toJson: (v) => v,
    fromJson: (j, f) => {
      if (typeof j !== 'string' || !Object.prototype.hasOwnProperty.call(values, j)) throw badJson(f, j);
      return j as N;
    },
  };
}

/** The field types of a structure, in wire order (object key order). */
export type Fields<T> = { [K in keyof T]-?: FieldType<T[K]> };

/** A structure: its fields back to back, with no prefix. */
export function struct<T>(fields: Fields<T>): FieldType<T> {
  const entries = Object.entries(fields) as [keyof T & string, FieldType<unknown>][];
  return {
    minLen: entries.reduce((n, [, t]) => n + t.minLen, 0),
    get: (r) => {
      const out: Record<string, unknown> = {};
      for (const [name, t] of entries) out[name] = t.get(r, name);
      return out as T;
    },
    put: (w, v) => {
      if (typeof v !== 'object' || v === null) throw invalidValue('struct', w.length(), String(v));
      for (const [name, t] of entries) t.put(w, (v as Record<string, unknown>)[name], name);
    },
    toJson: (v) => {
      const out: { [key: string]: Json } = {};
      for (const [name, t] of entries) out[snakeCase(name)] = t.toJson((v as Record<string, unknown>)[name]);
      return out;
    },
    fromJson: (j, f) => {
      if (typeof j !== 'object' || j === null || Array.isArray(j)) throw badJson(f, j);
      const out: Record<string, unknown> = {};
      for (const [name, t] of entries) {
        const key = snakeCase(name);
        if (!(key in j)) throw new CodecError('InvalidValue', `JSON of \`${f}\` lacks \`${key}\``, key);
        out[name] = t.fromJson(j[key] as Json, key);
      }
      return out as T;
    },
  };
}
