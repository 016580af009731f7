/**
 * Reads the groups a TLS ClientHello offers: `supported_groups` (extension 10) and the
 * groups it sends a key share for (`key_share`, extension 51), from the first bytes a
 * client sends. Enough of RFC 8446 §4.1.2 for tests that check what a client offers.
 */
import net from 'node:net'

export interface OfferedGroups {
  supported: number[]
  keyShares: number[]
}

/** TLS group code points (IANA "TLS Supported Groups") the tests name. */
export const GROUP = { secp256r1: 0x0017, secp384r1: 0x0018, x25519: 0x001d, x25519mlkem768: 0x11ec } as const

/** Parses one ClientHello record; throws on anything else. */
export function offeredGroups(record: Buffer): OfferedGroups {
  if (record[0] !== 22 || record[5] !== 1) throw new Error('not a ClientHello record')
  let at = 5 + 4 + 2 + 32
  at += 1 + record.readUInt8(at) // session id
  at += 2 + record.readUInt16BE(at) // cipher suites
  at += 1 + record.readUInt8(at) // compression methods
  const end = at + 2 + record.readUInt16BE(at)
  at += 2
  const out: OfferedGroups = { supported: [], keyShares: [] }
  while (at < end) {
    const type = record.readUInt16BE(at)
    const len = record.readUInt16BE(at + 2)
    const body = record.subarray(at + 4, at + 4 + len)
    if (type === 10) for (let i = 2; i < body.length; i += 2) out.supported.push(body.readUInt16BE(i))
    if (type === 51) {
      for (let i = 2; i < body.length; i += 4 + body.readUInt16BE(i + 2)) out.keyShares.push(body.readUInt16BE(i))
    }
    at += 4 + len
  }
  return out
}

/**
 * A TCP relay in front of `target` that records what each client offered in its
 * ClientHello (in connection order), then passes every byte through both ways.
 */
export async function helloRecorder(target: { host: string; port: number }): Promise<{ port: number; offers: OfferedGroups[]; close(): Promise<void> }> {
  const offers: OfferedGroups[] = []
  const sockets = new Set<net.Socket>()
  const server = net.createServer((client) => {
    sockets.add(client)
    client.on('close', () => sockets.delete(client))
    let head = Buffer.alloc(0)
    const upstream = net.connect(target)
    sockets.add(upstream)
    upstream.on('close', () => sockets.delete(upstream))
    upstream.on('error', () => client.destroy())
    client.on('error', () => upstream.destroy())
    const onHead = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk])
      if (head.length < 5 || head.length < 5 + head.readUInt16BE(3)) return
      client.off('data', onHead)
      offers.push(offeredGroups(head))
      upstream.write(head)
      client.pipe(upstream)
      upstream.pipe(client)
    }
    client.on('data', onHead)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as net.AddressInfo).port,
    offers,
    close: () => {
      for (const s of sockets) s.destroy()
      return new Promise((resolve) => server.close(() => resolve()))
    },
  }
}
