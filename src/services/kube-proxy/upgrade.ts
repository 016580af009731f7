import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { describeError } from '../../core/errors.ts'
import { authority, upgradeRequestHead } from './headers.ts'
import { writeRawStatus } from './status.ts'
import type { UpstreamConnections } from './upstream-connections.ts'

/** What the upgrade pipe reports back for metrics, health and logs. */
export interface UpgradeHooks {
  /** The API server answered the upgrade with this status (101 when it switched). */
  onStatus(status: number, seconds: number): void
  onUpstreamError(err: Error): void
  /** The piped connection closed (only called after a 101). */
  onClosed(): void
}

const STATUS_LINE = /^HTTP\/1\.[01] (\d{3})/

/**
 * Passes an upgrade request (`exec`, `attach`, `port-forward`, `cp`: WebSocket
 * v5.channel.k8s.io… or SPDY/3.1) to the API server over a fresh mutual-TLS connection,
 * then pipes raw bytes both ways until either side closes. The proxy never parses the
 * upgraded protocol, so SPDY and every WebSocket subprotocol work alike; it reads only
 * the status line of the answer for metrics. This is where the `http-proxy` package
 * fails: it destroys upgrades that are not WebSocket, which breaks SPDY exec.
 */
export function pipeUpgrade(req: IncomingMessage, client: Duplex, head: Buffer, conns: UpstreamConnections, hooks: UpgradeHooks): void {
  const started = performance.now()
  const up = conns.credential.upstream
  const upstream = conns.connectTunnel()
  let connected = false
  let switched = false
  const teardown = () => {
    client.destroy()
    upstream.destroy()
  }
  client.once('close', () => {
    upstream.destroy()
    if (switched) hooks.onClosed()
  })
  client.on('error', teardown)
  upstream.once('close', () => client.destroy())
  upstream.on('error', (err) => {
    if (connected) return teardown()
    hooks.onUpstreamError(err)
    writeRawStatus(client, 502, 'ServiceUnavailable', `memid: cannot reach the Kubernetes API server ${up.uri}: ${describeError(err)}`)
  })
  upstream.once('secureConnect', () => {
    connected = true
    upstream.write(upgradeRequestHead(req.method ?? 'GET', req.url ?? '/', req.rawHeaders, authority(up.host, up.port)))
    if (head.length > 0) upstream.write(head)
    upstream.once('data', (first: Buffer) => {
      const m = STATUS_LINE.exec(first.toString('latin1', 0, Math.min(first.length, 16)))
      const status = m === null ? 502 : Number(m[1])
      switched = status === 101
      hooks.onStatus(status, (performance.now() - started) / 1000)
      client.write(first)
      upstream.pipe(client)
    })
    client.pipe(upstream)
  })
}
