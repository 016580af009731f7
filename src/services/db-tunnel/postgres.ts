import type net from 'node:net'

/*
 * The few pieces of the PostgreSQL wire protocol the tunnel needs: the packets a client
 * sends before it is authenticated (SSLRequest, GSSENCRequest, CancelRequest,
 * StartupMessage) and the ErrorResponse it can be answered with. After the startup
 * message the tunnel never looks at a byte again.
 */

/** `SSLRequest`: length 8, code 1234.5679. */
export const SSL_REQUEST_CODE = 80877103
/** `GSSENCRequest`: length 8, code 1234.5680. */
export const GSSENC_REQUEST_CODE = 80877104
/** `CancelRequest`: length 16 (longer keys from protocol 3.2 on), code 1234.5678. */
export const CANCEL_REQUEST_CODE = 80877102
/** PostgreSQL's own MAX_STARTUP_PACKET_LENGTH: anything longer is not a real client. */
export const MAX_STARTUP_PACKET = 10_000
/** Protocol 3.2 allows cancel keys of up to 256 bytes. */
const MAX_CANCEL_PACKET = 8 + 4 + 256

/** The 8 bytes of an SSLRequest, as the tunnel sends it upstream. */
export const SSL_REQUEST = packet8(SSL_REQUEST_CODE)

function packet8(code: number): Buffer {
  const b = Buffer.alloc(8)
  b.writeInt32BE(8, 0)
  b.writeInt32BE(code, 4)
  return b
}

/** SQLSTATE codes the tunnel answers with. */
export const SqlState = {
  /** A frontend sent something that is not the protocol. */
  protocolViolation: '08P01',
  /** The tunnel could not reach or talk to the database server. */
  unableToConnect: '08001',
  /** A failure while connecting that is not the client's doing. */
  connectionFailure: '08006',
  /** Wrong user, expired identity, certificate refused. */
  invalidAuthorization: '28000',
  /** The tunnel is not ready to serve yet. */
  cannotConnectNow: '57P03',
  /** max_connections of the tunnel reached. */
  tooManyConnections: '53300',
  /** Session closed after the tunnel's idle timeout. */
  idleSessionTimeout: '57P05',
  /** Frontend protocol major version other than 3. */
  featureNotSupported: '0A000',
} as const

export interface ErrorFields {
  code: string
  message: string
  detail?: string
  hint?: string
}

/**
 * Encodes a FATAL `ErrorResponse` ('E'). psql prints it as
 * `FATAL:  <message>` followed by DETAIL and HINT lines.
 */
export function errorResponse(fields: ErrorFields): Buffer {
  const parts: Buffer[] = []
  const field = (type: string, value: string) => {
    // A NUL would end the field early; the server's own messages never contain one.
    parts.push(Buffer.from(type + value.replaceAll('\0', '') + '\0', 'utf8'))
  }
  field('S', 'FATAL')
  field('V', 'FATAL')
  field('C', fields.code)
  field('M', fields.message)
  if (fields.detail !== undefined) field('D', fields.detail)
  if (fields.hint !== undefined) field('H', fields.hint)
  parts.push(Buffer.from([0]))
  const body = Buffer.concat(parts)
  const head = Buffer.alloc(5)
  head.write('E', 0, 'latin1')
  head.writeInt32BE(body.length + 4, 1)
  return Buffer.concat([head, body])
}

/** What the client asked for once the SSL/GSS negotiation is over. */
export type ClientHello =
  | { kind: 'startup'; packet: Buffer; params: Map<string, string>; version: number }
  | { kind: 'cancel'; packet: Buffer }

/**
 * Why a connection is not tunnelled: what the client is told (a FATAL ErrorResponse, when
 * the protocol allows one) and what the metrics count (`reason`).
 */
export class TunnelRefusal extends Error {
  readonly reason: string
  readonly fields: ErrorFields
  constructor(reason: string, fields: ErrorFields) {
    super(fields.message)
    this.name = 'TunnelRefusal'
    this.reason = reason
    this.fields = fields
  }
}

function violation(message: string): TunnelRefusal {
  return new TunnelRefusal('bad_startup', { code: SqlState.protocolViolation, message })
}

/**
 * Parses `int32 len, int32 version, (name NUL value NUL)* NUL`. Every length and
 * terminator is checked, so a truncated or hostile packet becomes a TunnelRefusal.
 */
export function parseStartupParams(packet: Buffer): Map<string, string> {
  const params = new Map<string, string>()
  let o = 8
  for (;;) {
    if (o >= packet.length) throw violation('invalid startup packet layout: expected terminator as last byte')
    if (packet[o] === 0) {
      if (o !== packet.length - 1) throw violation('invalid startup packet layout: data after the terminator')
      return params
    }
    const nameEnd = packet.indexOf(0, o)
    if (nameEnd < 0) throw violation('invalid startup packet layout: unterminated parameter name')
    const valueEnd = packet.indexOf(0, nameEnd + 1)
    if (valueEnd < 0) throw violation('invalid startup packet layout: unterminated parameter value')
    const name = packet.toString('utf8', o, nameEnd)
    if (params.has(name)) throw violation(`duplicate startup parameter "${printable(name)}"`)
    params.set(name, packet.toString('utf8', nameEnd + 1, valueEnd))
    o = valueEnd + 1
  }
}

/** Client-supplied text made safe to echo in a message or a log line. */
export function printable(s: string, max = 64): string {
  const clean = s.replace(/[^\x20-\x7e]/g, '?')
  return clean.length > max ? `${clean.slice(0, max)}…` : clean
}

/**
 * Reads the client's first packets. SSLRequest and GSSENCRequest are answered 'N' and
 * the loop goes on; the first StartupMessage or CancelRequest ends it. Bytes the client
 * sent after that packet are pushed back into the socket for the pipe to forward.
 *
 * On return the socket is paused with no listener of ours attached.
 */
export function readClientHello(socket: net.Socket, timeoutMs: number): Promise<ClientHello> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0)
    let answeredSsl = false
    let answeredGss = false
    const timer = setTimeout(() => {
      finish(new TunnelRefusal('client_timeout', {
        code: SqlState.protocolViolation,
        message: `no startup message received within ${timeoutMs} ms`,
      }))
    }, timeoutMs)

    const finish = (result: TunnelRefusal | ClientHello, rest?: Buffer) => {
      clearTimeout(timer)
      socket.off('data', onData)
      socket.off('end', onEnd)
      socket.off('error', onEnd)
      socket.off('close', onEnd)
      socket.pause()
      if (result instanceof TunnelRefusal) return reject(result)
      if (rest !== undefined && rest.length > 0) socket.unshift(rest)
      resolve(result)
    }

    const onEnd = () => {
      finish(new TunnelRefusal('client_closed', {
        code: SqlState.protocolViolation,
        message: 'incomplete startup packet',
      }))
    }

    const onData = (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk])
      for (;;) {
        if (buf.length < 4) return
        const len = buf.readInt32BE(0)
        if (len < 8 || len > MAX_STARTUP_PACKET) {
          return finish(violation(`invalid length of startup packet: ${len}`))
        }
        if (buf.length < 8) return
        // Lengths are checked against the request code before waiting for the body, so a
        // bad header is answered at once rather than after the startup timeout.
        const code = buf.readInt32BE(4)
        const negotiation = code === SSL_REQUEST_CODE || code === GSSENC_REQUEST_CODE
        if (negotiation && len !== 8) return finish(violation('invalid length of SSL/GSS negotiation request'))
        if (code === CANCEL_REQUEST_CODE && (len < 16 || len > MAX_CANCEL_PACKET)) return finish(violation('invalid length of cancel request'))
        const major = code >>> 16
        if (!negotiation && code !== CANCEL_REQUEST_CODE && major !== 3) {
          return finish(new TunnelRefusal('bad_startup', {
            code: SqlState.featureNotSupported,
            message: `unsupported frontend protocol ${major}.${code & 0xffff}: this tunnel speaks protocol 3`,
          }))
        }
        if (buf.length < len) return
        const packet = buf.subarray(0, len)
        const rest = buf.subarray(len)
        if (negotiation) {
          const isSsl = code === SSL_REQUEST_CODE
          if (isSsl ? answeredSsl : answeredGss) return finish(violation('repeated SSL/GSS negotiation request'))
          if (isSsl) answeredSsl = true
          else answeredGss = true
          // A client must wait for the answer before sending more; bytes already here
          // were sent in the clear before encryption was agreed (CVE-2021-23214's shape).
          if (rest.length > 0) return finish(violation('received unencrypted data after SSL/GSS request'))
          // 'N': the local leg is plaintext by design. Only processes on this host reach the
          // listener (loopback or a 0600 socket), and TLS starts at the tunnel. Answering 'N'
          // rather than hanging or refusing is what lets sslmode=prefer clients connect.
          socket.write('N')
          buf = Buffer.alloc(0)
          continue
        }
        if (code === CANCEL_REQUEST_CODE) return finish({ kind: 'cancel', packet: Buffer.from(packet) }, rest)
        let params: Map<string, string>
        try {
          params = parseStartupParams(packet)
        } catch (err) {
          return finish(err as TunnelRefusal)
        }
        return finish({ kind: 'startup', packet: Buffer.from(packet), params, version: code }, rest)
      }
    }

    socket.on('data', onData)
    socket.once('end', onEnd)
    socket.once('error', onEnd)
    socket.once('close', onEnd)
    // An explicitly paused socket (pauseOnConnect) does not start flowing on 'data' alone.
    socket.resume()
  })
}
