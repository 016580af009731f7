import { MemidError } from '../core/errors.ts'

/**
 * Reads the SSH wire encoding (RFC 4251 §5). Every read checks bounds and throws a
 * MemidError on truncation, so hostile input can only ever end in that error.
 * Strings come back as views into the input, never copies.
 */
export class SshReader {
  readonly buf: Buffer
  #off: number
  readonly #end: number
  readonly #what: string

  constructor(buf: Buffer, what = 'SSH data', start = 0, end = buf.length) {
    this.buf = buf
    this.#off = start
    this.#end = end
    this.#what = what
  }

  get offset(): number {
    return this.#off
  }

  get remaining(): number {
    return this.#end - this.#off
  }

  #need(n: number): void {
    if (this.#end - this.#off < n) throw new MemidError('ERR_BAD_REQUEST', `${this.#what} is truncated`)
  }

  u8(): number {
    this.#need(1)
    return this.buf[this.#off++] as number
  }

  bool(): boolean {
    return this.u8() !== 0
  }

  u32(): number {
    this.#need(4)
    const v = this.buf.readUInt32BE(this.#off)
    this.#off += 4
    return v
  }

  u64(): bigint {
    this.#need(8)
    const v = this.buf.readBigUInt64BE(this.#off)
    this.#off += 8
    return v
  }

  string(): Buffer {
    const n = this.u32()
    this.#need(n)
    const s = this.buf.subarray(this.#off, this.#off + n)
    this.#off += n
    return s
  }

  /** A string that must be printable text (names, key ids, principals). */
  text(): string {
    return this.string().toString('utf8')
  }

  /** An mpint as unsigned big-endian bytes without leading zeros. */
  mpint(): Buffer {
    const s = this.string()
    if (s.length > 0 && ((s[0] as number) & 0x80) !== 0) throw new MemidError('ERR_BAD_REQUEST', `${this.#what} has a negative mpint`)
    let i = 0
    while (i < s.length && s[i] === 0) i++
    return s.subarray(i)
  }

  /** Throws unless every byte was consumed. */
  end(): void {
    if (this.#off !== this.#end) throw new MemidError('ERR_BAD_REQUEST', `${this.#what} has ${this.#end - this.#off} trailing bytes`)
  }
}

/** Builds SSH wire data from parts, concatenated once at the end. */
export class SshWriter {
  readonly #parts: Buffer[] = []

  raw(b: Uint8Array): this {
    this.#parts.push(Buffer.from(b.buffer, b.byteOffset, b.byteLength))
    return this
  }

  u8(v: number): this {
    this.#parts.push(Buffer.of(v))
    return this
  }

  u32(v: number): this {
    const b = Buffer.allocUnsafe(4)
    b.writeUInt32BE(v)
    this.#parts.push(b)
    return this
  }

  u64(v: bigint): this {
    const b = Buffer.allocUnsafe(8)
    b.writeBigUInt64BE(v)
    this.#parts.push(b)
    return this
  }

  string(v: Uint8Array | string): this {
    const b = typeof v === 'string' ? Buffer.from(v, 'utf8') : v
    return this.u32(b.length).raw(b)
  }

  /** An unsigned big-endian integer as an SSH mpint (minimal, sign bit kept clear). */
  mpint(unsigned: Uint8Array): this {
    let i = 0
    while (i < unsigned.length && unsigned[i] === 0) i++
    const body = unsigned.subarray(i)
    if (body.length > 0 && ((body[0] as number) & 0x80) !== 0) return this.u32(body.length + 1).u8(0).raw(body)
    return this.u32(body.length).raw(body)
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.#parts)
  }
}

/** The SSH encoding of a single string, as a fresh buffer. */
export function sshString(v: Uint8Array | string): Buffer {
  return new SshWriter().string(v).toBuffer()
}
