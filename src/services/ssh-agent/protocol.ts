/**
 * The ssh-agent wire protocol (draft-ietf-sshm-ssh-agent, OpenSSH PROTOCOL.agent):
 * `uint32 length, byte type, payload`, one message per frame.
 */

/** Frames longer than this close the connection (OpenSSH's ssh-agent uses the same cap). */
export const MAX_FRAME = 256 * 1024

export const SSH_AGENT_FAILURE = 5
export const SSH_AGENT_SUCCESS = 6
export const SSH_AGENTC_REQUEST_IDENTITIES = 11
export const SSH_AGENT_IDENTITIES_ANSWER = 12
export const SSH_AGENTC_SIGN_REQUEST = 13
export const SSH_AGENT_SIGN_RESPONSE = 14
export const SSH_AGENTC_EXTENSION = 27
export const SSH_AGENT_EXTENSION_FAILURE = 28
export const SSH_AGENT_EXTENSION_RESPONSE = 29

/**
 * Requests that would change what the agent holds. memid's agent is read-only, so each
 * gets FAILURE. The protocol-1 numbers stay because `ssh-add -D` still sends
 * REMOVE_ALL_RSA_IDENTITIES after the protocol-2 request.
 */
export const MUTATING_REQUESTS: ReadonlyMap<number, string> = new Map([
  [1, 'request-rsa-identities'],
  [3, 'rsa-challenge'],
  [7, 'add-rsa-identity'],
  [8, 'remove-rsa-identity'],
  [9, 'remove-all-rsa-identities'],
  [17, 'add-identity'],
  [18, 'remove-identity'],
  [19, 'remove-all-identities'],
  [20, 'add-smartcard-key'],
  [21, 'remove-smartcard-key'],
  [22, 'lock'],
  [23, 'unlock'],
  [24, 'add-rsa-id-constrained'],
  [25, 'add-id-constrained'],
  [26, 'add-smartcard-key-constrained'],
])

export const EXT_QUERY = 'query'
export const EXT_SESSION_BIND = 'session-bind@openssh.com'
export const SUPPORTED_EXTENSIONS: readonly string[] = [EXT_QUERY, EXT_SESSION_BIND]

/** A whole frame for a message with no payload. */
function bare(type: number): Buffer {
  const b = Buffer.alloc(5)
  b.writeUInt32BE(1, 0)
  b[4] = type
  return b
}

export const FAILURE_FRAME: Buffer = bare(SSH_AGENT_FAILURE)
export const SUCCESS_FRAME: Buffer = bare(SSH_AGENT_SUCCESS)

/** Wraps a message (type byte and payload) in its length prefix. */
export function frame(type: number, ...payload: Buffer[]): Buffer {
  let n = 1
  for (const p of payload) n += p.length
  const out = Buffer.allocUnsafe(4 + n)
  out.writeUInt32BE(n, 0)
  out[4] = type
  let o = 5
  for (const p of payload) o += p.copy(out, o)
  return out
}

/** `uint32 length, bytes` for each value, concatenated. */
export function strings(...values: (Buffer | string)[]): Buffer {
  const bufs = values.map((v) => (typeof v === 'string' ? Buffer.from(v, 'utf8') : v))
  let n = 0
  for (const b of bufs) n += 4 + b.length
  const out = Buffer.allocUnsafe(n)
  let o = 0
  for (const b of bufs) {
    out.writeUInt32BE(b.length, o)
    o += 4 + b.copy(out, o + 4)
  }
  return out
}

/** IDENTITIES_ANSWER for the given keys, as a whole frame. */
export function identitiesAnswer(keys: readonly { blob: Buffer; comment: string }[]): Buffer {
  const count = Buffer.allocUnsafe(4)
  count.writeUInt32BE(keys.length)
  return frame(SSH_AGENT_IDENTITIES_ANSWER, count, ...keys.map((k) => strings(k.blob, k.comment)))
}

export const EMPTY_IDENTITIES_FRAME: Buffer = identitiesAnswer([])

/** The `query` extension's answer: the extension name echoed, then each supported name. */
export const QUERY_RESPONSE_FRAME: Buffer = frame(SSH_AGENT_EXTENSION_RESPONSE, strings(EXT_QUERY, ...SUPPORTED_EXTENSIONS))

/** Why a connection was closed for bad framing. */
export type FrameError = 'oversized' | 'empty'

/**
 * Splits a byte stream into agent frames without copying complete frames: each message
 * is handed over as (buffer, start, end) of the type byte and payload. A partial frame
 * is kept until the rest arrives; nothing beyond one MAX_FRAME frame is ever buffered.
 */
export class FrameReader {
  #pending: Buffer | undefined
  readonly #onMessage: (buf: Buffer, start: number, end: number) => boolean

  /** `onMessage` returns false to stop reading (the connection is being closed). */
  constructor(onMessage: (buf: Buffer, start: number, end: number) => boolean) {
    this.#onMessage = onMessage
  }

  /** Bytes held back waiting for the rest of a frame. */
  get buffered(): number {
    return this.#pending?.length ?? 0
  }

  /** Feeds a chunk; returns a FrameError if the stream is unusable, else undefined. */
  push(chunk: Buffer): FrameError | undefined {
    const buf = this.#pending === undefined ? chunk : Buffer.concat([this.#pending, chunk])
    this.#pending = undefined
    let off = 0
    while (buf.length - off >= 4) {
      const len = buf.readUInt32BE(off)
      if (len === 0) return 'empty'
      if (len > MAX_FRAME) return 'oversized'
      if (buf.length - off - 4 < len) break
      if (!this.#onMessage(buf, off + 4, off + 4 + len)) return undefined
      off += 4 + len
    }
    // Copy the tail so a small leftover never pins a large chunk in memory.
    if (off < buf.length) this.#pending = Buffer.from(buf.subarray(off))
    return undefined
  }
}
