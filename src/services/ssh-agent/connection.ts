import type net from 'node:net'
import { parseSshPublicKeyBlob, sshFingerprint, sshPlainKeyBlob, verifySshSignature } from '../../pki/openssh.ts'
import { SshReader } from '../../pki/ssh-wire.ts'
import type { Logger } from '../../core/log.ts'
import type { Keyring } from './keyring.ts'
import type { SshAgentMetrics } from './metrics.ts'
import {
  EMPTY_IDENTITIES_FRAME, EXT_QUERY, EXT_SESSION_BIND, FAILURE_FRAME, FrameReader, MUTATING_REQUESTS,
  QUERY_RESPONSE_FRAME, SSH_AGENTC_EXTENSION, SSH_AGENTC_REQUEST_IDENTITIES, SSH_AGENTC_SIGN_REQUEST, SUCCESS_FRAME,
} from './protocol.ts'

/** What a connection needs from its service. */
export interface AgentContext {
  /** The keyring to serve now; throws (with a safe message) when the identity is not valid. */
  keyring(): Keyring
  /** A still-valid keyring from before the latest renewal that holds this key, if any. */
  previous(buf: Buffer, start: number, end: number): Keyring | undefined
  metrics: SshAgentMetrics
  logger: Logger
}

/** Pause reading from a client that does not read its answers. */
const MAX_UNREAD_OUTPUT = 1 << 20
/** As in OpenSSH: a connection may be bound to this many sessions at most. */
const MAX_SESSION_BINDS = 16

/** Thrown by the request parsers for a message that does not parse. */
class Malformed extends Error {}

function malformed(): never {
  throw new Malformed('malformed request')
}

/**
 * One client of the agent socket. Requests are answered in order; answers to requests
 * that arrived in one read are written together.
 */
export class AgentConnection {
  readonly #socket: net.Socket
  readonly #ctx: AgentContext
  readonly #reader: FrameReader
  #out: Buffer[] = []
  #binds = 0
  #authBound = false
  #forwarded = false
  #closed = false

  constructor(socket: net.Socket, ctx: AgentContext) {
    this.#socket = socket
    this.#ctx = ctx
    this.#reader = new FrameReader((buf, start, end) => this.#message(buf, start, end))
    socket.on('data', (chunk: Buffer) => this.#data(chunk))
    socket.on('drain', () => socket.resume())
    socket.on('error', () => socket.destroy())
  }

  #data(chunk: Buffer): void {
    if (this.#closed) return
    const err = this.#reader.push(chunk)
    this.#flush()
    if (err !== undefined) this.#close(err === 'oversized' ? 'oversized frame' : 'empty frame', err)
    else if (this.#socket.writableLength > MAX_UNREAD_OUTPUT) this.#socket.pause()
  }

  #flush(): void {
    const out = this.#out
    if (out.length === 0) return
    this.#out = []
    this.#socket.write(out.length === 1 ? (out[0] as Buffer) : Buffer.concat(out))
  }

  /** Closes this connection only; everything already answered is still delivered. */
  #close(why: string, reason: string): void {
    if (this.#closed) return
    this.#closed = true
    this.#ctx.metrics.protocolErrors.inc({ reason })
    this.#ctx.logger.debug({ reason: why }, 'closing ssh-agent connection')
    const socket = this.#socket
    socket.end()
    // A client that never reads would keep the half-closed socket forever.
    setTimeout(() => socket.destroy(), 2000).unref()
  }

  #message(buf: Buffer, start: number, end: number): boolean {
    const type = buf[start] as number
    try {
      switch (type) {
        case SSH_AGENTC_SIGN_REQUEST:
          this.#out.push(this.#sign(buf, start + 1, end))
          return true
        case SSH_AGENTC_REQUEST_IDENTITIES:
          this.#out.push(this.#identities())
          return true
        case SSH_AGENTC_EXTENSION:
          this.#out.push(this.#extension(buf, start + 1, end))
          return true
        default: {
          const name = MUTATING_REQUESTS.get(type)
          if (name !== undefined) {
            this.#ctx.metrics.refused.inc({ request: name })
            this.#ctx.logger.info({ request: name }, 'refused a request to change keys: the memid ssh agent is read-only')
          }
          this.#out.push(FAILURE_FRAME)
          return true
        }
      }
    } catch (err) {
      if (err instanceof Malformed || (err as { code?: string }).code === 'ERR_BAD_REQUEST') {
        this.#close(`malformed message of type ${type}`, 'malformed')
        return false
      }
      this.#ctx.logger.error({ err: (err as Error).message, type }, 'ssh-agent request failed')
      this.#out.push(FAILURE_FRAME)
      return true
    }
  }

  #identities(): Buffer {
    try {
      return this.#ctx.keyring().identities
    } catch {
      // Fails closed: without a valid certificate there is nothing to offer.
      return EMPTY_IDENTITIES_FRAME
    }
  }

  /** SIGN_REQUEST: `string key blob, string data, uint32 flags`, parsed in place. */
  #sign(buf: Buffer, o: number, end: number): Buffer {
    if (end - o < 4) malformed()
    const keyLen = buf.readUInt32BE(o)
    const keyStart = o + 4
    o = keyStart + keyLen
    if (keyLen > end - keyStart || end - o < 4) malformed()
    const dataLen = buf.readUInt32BE(o)
    const dataStart = o + 4
    o = dataStart + dataLen
    if (dataLen > end - dataStart || end - o < 4) malformed()
    const flags = buf.readUInt32BE(o)
    const m = this.#ctx.metrics
    if (this.#forwarded) {
      m.sign.forwarded.inc()
      this.#ctx.logger.warn('refused to sign on a forwarded agent connection: the memid identity stays on this machine')
      return FAILURE_FRAME
    }
    let ring: Keyring
    try {
      ring = this.#ctx.keyring()
    } catch {
      m.sign.expired.inc()
      return FAILURE_FRAME
    }
    if (!ring.has(buf, keyStart, keyStart + keyLen)) {
      const old = this.#ctx.previous(buf, keyStart, keyStart + keyLen)
      if (old === undefined) {
        m.sign.unknownKey.inc()
        return FAILURE_FRAME
      }
      ring = old
    }
    const out = ring.signFrame(buf.subarray(dataStart, dataStart + dataLen), flags)
    m.sign.ok.inc()
    return out
  }

  #extension(buf: Buffer, start: number, end: number): Buffer {
    const r = new SshReader(buf, 'extension request', start, end)
    const name = r.text()
    if (name === EXT_QUERY) return QUERY_RESPONSE_FRAME
    if (name !== EXT_SESSION_BIND) return FAILURE_FRAME
    const hostKey = r.string()
    const sessionId = r.string()
    const signature = r.string()
    const forwarding = r.bool()
    return this.#sessionBind(hostKey, sessionId, signature, forwarding) ? SUCCESS_FRAME : FAILURE_FRAME
  }

  /**
   * session-bind@openssh.com: ssh tells the agent which server (host key) this
   * connection authenticates to, proven by the host's signature over the session id.
   * We verify and record it; a connection bound for forwarding may not sign, because
   * the bot's identity is meant for this machine only. ssh sends the host key as the
   * server presented it, often a host certificate (what `memid auth sign-host` makes):
   * the signature is the certified key's, so that is what it is checked with, as
   * OpenSSH's own agent does. Whether the certificate is trusted is ssh's business.
   */
  #sessionBind(hostKey: Buffer, sessionId: Buffer, signature: Buffer, forwarding: boolean): boolean {
    if (this.#binds >= MAX_SESSION_BINDS || this.#authBound) return false
    let plain: Buffer | undefined
    try {
      plain = sshPlainKeyBlob(hostKey)
      if (!verifySshSignature(parseSshPublicKeyBlob(plain), signature, sessionId)) plain = undefined
    } catch {
      plain = undefined
    }
    if (plain === undefined) {
      this.#ctx.logger.warn('ssh-agent session-bind with a bad host signature refused')
      return false
    }
    this.#binds++
    if (forwarding) this.#forwarded = true
    else this.#authBound = true
    this.#ctx.logger.debug({ hostKey: sshFingerprint(plain), forwarding }, 'ssh-agent connection bound to a session')
    return true
  }
}
