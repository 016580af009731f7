/**
 * Renewals only (or keep-alive heartbeats, OP=heartbeat, or heartbeats each on a new
 * connection, OP=connect) against one bench auth server
 * (bench/auth.ts's server role, SQLite), to profile the server under that load alone:
 *
 *   MEMID_BENCH_CPU_PROF=DIR node bench/_renew-profile.ts          V8 CPU profile of the server
 *   MEMID_BENCH_NODE_FLAGS=--perf-basic-prof-only-functions PERF=out.data node bench/_renew-profile.ts
 *                                                                  perf record -g of the server
 *   CONC=32 SECS=8 WARM=3                                          bots, seconds measured, seconds of warm-up before (defaults)
 *
 * Prints renewals/s and the server's CPU ms per renewal (from /proc). A renewal is what
 * bench/auth.ts does: a new key, the renew request, then a heartbeat with the new identity
 * over a new mutual-TLS connection.
 */
import { spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import type https from 'node:https'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { AuthClient } from '../src/agent/auth-client.ts'
import { cpuSeconds, startRole } from './_common.ts'
import { heartbeat, join, renew } from '../test/helpers/identity.ts'

const seconds = Number(process.env.SECS ?? 8)
const conc = Number(process.env.CONC ?? 32)
const op = process.env.OP ?? 'renew'
const dir = mkdtempSync(path.join(tmpdir(), 'memid-renew-profile-'))
mkdirSync(path.join(dir, 'r0'), { mode: 0o700 })
const role = startRole(new URL('./auth.ts', import.meta.url).pathname, 'memid', ['--dir', path.join(dir, 'r0'), '--store', `sqlite:${path.join(dir, 'memid.db')}`, '--workers', '1', '--setup'])
try {
  const m = await role.next() as { addr: string; caPin: string }
  role.child.send({ tokens: conc })
  const tokens = (await role.next()).tokens as string[]
  const bots = await Promise.all(tokens.map(async (t) => {
    const client = new AuthClient({ server: m.addr, caPins: [m.caPin] })
    await client.bootstrap()
    return { client, id: await join(client, t) }
  }))
  // WARM seconds of the same load first, unmeasured: V8 compiles the hot paths then.
  const once = async (b: (typeof bots)[number]) => {
    if (op === 'renew') {
      const next = await renew(b.client, b.id)
      await heartbeat(b.client, next)
      ;(b.id.caller.agent as https.Agent).destroy()
      b.id = next
    } else {
      await heartbeat(b.client, b.id)
      // OP=connect: each heartbeat over a new mutual-TLS connection (the handshake's share of a renewal).
      if (op === 'connect') (b.id.caller.agent as https.Agent).destroy()
    }
  }
  const load = async (secs: number) => {
    let n = 0
    const start = performance.now()
    await Promise.all(bots.map(async (b) => {
      while (performance.now() - start < secs * 1000) {
        await once(b)
        n++
      }
    }))
    return n
  }
  await load(Number(process.env.WARM ?? 3))
  const perf = process.env.PERF
    ? spawn('perf', ['record', '-F', '999', '-g', '-o', process.env.PERF, '-p', String(role.child.pid), '--', 'sleep', String(seconds)], { stdio: 'inherit' })
    : undefined
  const perfDone = perf && new Promise((r) => perf.once('exit', r))
  const cpu0 = cpuSeconds(role.child.pid)
  const t0 = performance.now()
  const n = await load(seconds)
  const elapsed = (performance.now() - t0) / 1000
  const cpu = cpuSeconds(role.child.pid) - cpu0
  console.log(`${op}: ${n} in ${elapsed.toFixed(1)} s = ${(n / elapsed).toFixed(0)}/s, server CPU ${(cpu * 1000 / n).toFixed(2)} ms/op`)
  await perfDone
  for (const b of bots) b.client.close()
} finally {
  // SIGTERM: the server role exits normally, so --cpu-prof writes its profile.
  if (role.child.exitCode === null && role.child.signalCode === null) {
    const exited = new Promise((r) => role.child.once('exit', r))
    role.child.kill('SIGTERM')
    await exited
  }
  rmSync(dir, { recursive: true, force: true })
}
