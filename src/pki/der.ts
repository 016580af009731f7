/**
 * The few DER pieces X.509 issuing needs (ITU-T X.690): a writer that builds a value
 * from already-encoded parts, and a reader that walks a certificate without an ASN.1
 * schema library. Both work on Buffers so a certificate is built by concatenation.
 */
import net from 'node:net'

/** Universal and context tags used in certificates. */
export const TAG = {
  BOOLEAN: 0x01, INTEGER: 0x02, BIT_STRING: 0x03, OCTET_STRING: 0x04, NULL: 0x05, OID: 0x06,
  UTF8_STRING: 0x0c, PRINTABLE_STRING: 0x13, IA5_STRING: 0x16, UTC_TIME: 0x17, GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30, SET: 0x31,
} as const

function lengthBytes(n: number): Buffer {
  if (n < 0x80) return Buffer.of(n)
  if (n < 0x100) return Buffer.of(0x81, n)
  if (n < 0x10000) return Buffer.of(0x82, n >> 8, n & 0xff)
  if (n < 0x1000000) return Buffer.of(0x83, n >> 16, (n >> 8) & 0xff, n & 0xff)
  throw new RangeError('DER value too long')
}

/** One tag-length-value from the already-encoded contents `parts`. */
export function tlv(tag: number, ...parts: Uint8Array[]): Buffer {
  let len = 0
  for (const p of parts) len += p.length
  return Buffer.concat([Buffer.of(tag), lengthBytes(len), ...parts])
}

export const seq = (...parts: Uint8Array[]): Buffer => tlv(TAG.SEQUENCE, ...parts)

/** An OBJECT IDENTIFIER from its dotted form. */
export function oid(dotted: string): Buffer {
  const arcs = dotted.split('.').map(Number)
  if (arcs.length < 2 || arcs.some((a) => !Number.isSafeInteger(a) || a < 0)) throw new TypeError(`bad OID "${dotted}"`)
  const out: number[] = []
  const push = (v: number) => {
    const bytes = [v & 0x7f]
    for (v = Math.floor(v / 128); v > 0; v = Math.floor(v / 128)) bytes.unshift((v & 0x7f) | 0x80)
    out.push(...bytes)
  }
  push((arcs[0] as number) * 40 + (arcs[1] as number))
  for (const a of arcs.slice(2)) push(a)
  return tlv(TAG.OID, Buffer.from(out))
}

/** A non-negative INTEGER from big-endian magnitude bytes (a leading zero is added when the top bit is set). */
export function uint(magnitude: Uint8Array): Buffer {
  let i = 0
  while (i < magnitude.length - 1 && magnitude[i] === 0) i++
  const m = magnitude.subarray(i)
  return ((m[0] ?? 0) & 0x80) !== 0 || m.length === 0 ? tlv(TAG.INTEGER, Buffer.of(0), m) : tlv(TAG.INTEGER, m)
}

/** A BIT STRING whose contents are whole bytes. */
export const bitString = (bytes: Uint8Array): Buffer => tlv(TAG.BIT_STRING, Buffer.of(0), bytes)
export const octetString = (bytes: Uint8Array): Buffer => tlv(TAG.OCTET_STRING, bytes)
export const utf8String = (s: string): Buffer => tlv(TAG.UTF8_STRING, Buffer.from(s, 'utf8'))

const PRINTABLE = /^[A-Za-z0-9 '()+,\-./:=?]*$/

/** PrintableString when every character allows it, UTF8String otherwise (as @peculiar/x509 chooses). */
export function directoryString(s: string): Buffer {
  return PRINTABLE.test(s) ? tlv(TAG.PRINTABLE_STRING, Buffer.from(s, 'latin1')) : utf8String(s)
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, '0')
}

/** UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5); whole seconds, `Z`. */
export function time(d: Date): Buffer {
  const y = d.getUTCFullYear()
  const rest = `${pad(d.getUTCMonth() + 1, 2)}${pad(d.getUTCDate(), 2)}${pad(d.getUTCHours(), 2)}${pad(d.getUTCMinutes(), 2)}${pad(d.getUTCSeconds(), 2)}Z`
  if (y >= 1950 && y < 2050) return tlv(TAG.UTC_TIME, Buffer.from(`${pad(y % 100, 2)}${rest}`, 'latin1'))
  return tlv(TAG.GENERALIZED_TIME, Buffer.from(`${pad(y, 4)}${rest}`, 'latin1'))
}

/** The 4 or 16 bytes of an IP address in text form. */
export function ipBytes(ip: string): Buffer {
  const family = net.isIP(ip)
  if (family === 4) return Buffer.from(ip.split('.').map(Number))
  if (family !== 6) throw new TypeError(`not an IP address: "${ip}"`)
  let text = ip
  const tail: number[] = []
  const v4 = /:(\d+\.\d+\.\d+\.\d+)$/.exec(text)
  if (v4) {
    const b = (v4[1] as string).split('.').map(Number)
    tail.push(((b[0] as number) << 8) | (b[1] as number), ((b[2] as number) << 8) | (b[3] as number))
    const cut = text.slice(0, v4.index + 1)
    text = cut.endsWith('::') ? cut : cut.slice(0, -1)
  }
  const [head = '', rest] = text.split('::')
  const words = (s: string) => (s === '' ? [] : s.split(':').map((h) => parseInt(h, 16)))
  const left = words(head)
  const right = rest === undefined ? [] : words(rest)
  const fill = 8 - tail.length - left.length - right.length
  const all = rest === undefined ? [...left, ...tail] : [...left, ...new Array<number>(fill).fill(0), ...right, ...tail]
  const out = Buffer.alloc(16)
  all.forEach((w, i) => out.writeUInt16BE(w, i * 2))
  return out
}

/** One decoded TLV: where its contents are inside the buffer it was read from. */
export interface Tlv {
  tag: number
  /** Offset of the tag byte. */
  start: number
  /** Offset of the first content byte. */
  body: number
  /** Offset just past the value. */
  end: number
}

/** Reads the TLV at `at`, checking that it fits inside `limit`. */
export function readTlv(buf: Uint8Array, at: number, limit = buf.length): Tlv {
  if (at + 2 > limit) throw new RangeError('DER: truncated')
  const tag = buf[at] as number
  let len = buf[at + 1] as number
  let body = at + 2
  if (len & 0x80) {
    const n = len & 0x7f
    if (n === 0 || n > 3 || body + n > limit) throw new RangeError('DER: bad length')
    len = 0
    for (let i = 0; i < n; i++) len = len * 256 + (buf[body + i] as number)
    body += n
  }
  const end = body + len
  if (end > limit) throw new RangeError('DER: truncated')
  return { tag, start: at, body, end }
}

/** The TLVs directly inside a constructed value. */
export function children(buf: Uint8Array, parent: Tlv): Tlv[] {
  const out: Tlv[] = []
  for (let at = parent.body; at < parent.end;) {
    const t = readTlv(buf, at, parent.end)
    out.push(t)
    at = t.end
  }
  return out
}
