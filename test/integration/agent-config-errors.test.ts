import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { startAgent, type AgentOptions } from '../../src/agent/agent.ts'
import { ConfigError } from '../../src/core/errors.ts'
import { startAuth, tempDir, type AuthFixture, type RunResult } from '../fixtures/memid.ts'

// issue 9: a bad config must be refused before the join token is read or the auth service
// contacted. Every case runs through both entry points, `memid start` (the built CLI in
// dist/) and `startAgent()`, and the token must still be unused afterwards.

const DIST_MAIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../dist/cli/main.js')

function runDist(args: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [DIST_MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, MEMID_TOKEN: '' } })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }))
  })
}

interface Case {
  what: string
  /** `memid start` flags beyond auth server, pin, token file and control socket; `yaml` is written to --config. */
  cli: { flags?: string[]; yaml?: string }
  /** startAgent() options beyond auth server, pin and token. */
  lib: Partial<AgentOptions>
  /** The start of the one-line message, naming the flag or key… */
  cliError: string
  /** …and the option. */
  libError: string
}

const long = `/tmp/${'x'.repeat(100)}.sock`

// `dir` is filled in before(): unix paths must be in a 0700 directory that exists.
let dir = ''
const CASES: (() => Case)[] = [
  () => ({
    what: 'port out of range', cli: { flags: ['--kube-proxy', '127.0.0.1:99999=prod'] },
    lib: { services: [{ type: 'kube-proxy', listen: '127.0.0.1:99999', cluster: 'prod' }] },
    cliError: '--kube-proxy[0].listen: port 99999 is out of range', libError: 'services[0].listen: port 99999 is out of range',
  }),
  () => ({
    what: 'host without a port', cli: { flags: ['--kube-proxy', 'localhost=prod'] },
    lib: { services: [{ type: 'kube-proxy', listen: 'localhost', cluster: 'prod' }] },
    cliError: '--kube-proxy[0].listen: must be host:port', libError: 'services[0].listen: must be host:port',
  }),
  () => ({
    what: 'relative socket path', cli: { flags: ['--db-tunnel', 'pg.sock=orders/app'] },
    lib: { services: [{ type: 'database-tunnel', listen: 'pg.sock', service: 'orders', username: 'app' }] },
    cliError: '--db-tunnel[0].listen: must be host:port or an absolute socket path', libError: 'services[0].listen: must be host:port or an absolute socket path',
  }),
  () => ({
    what: 'socket path too long', cli: { flags: ['--kube-proxy', `${long}=prod`] },
    lib: { services: [{ type: 'kube-proxy', listen: long, cluster: 'prod' }] },
    cliError: '--kube-proxy[0].listen: socket path is longer than 100', libError: 'services[0].listen: socket path is longer than 100',
  }),
  () => ({
    what: 'ssh agent on a TCP address', cli: { yaml: 'version: v1\nservices:\n  - { type: ssh-agent, path: "127.0.0.1:22" }\n' },
    lib: { services: [{ type: 'ssh-agent', path: '127.0.0.1:22' }] },
    cliError: 'services[0].path: must be an absolute unix socket path', libError: 'services[0].path: must be an absolute unix socket path',
  }),
  () => ({
    what: 'ssh agent flag not a path', cli: { flags: ['--ssh-agent', 'agent.sock'] },
    lib: { services: [{ type: 'ssh-agent', path: 'agent.sock' }] },
    cliError: '--ssh-agent: must be an absolute socket path', libError: 'services[0].path: must be host:port or an absolute socket path',
  }),
  () => ({
    what: 'db unix socket not named .s.PGSQL.<port>', cli: { flags: ['--db-tunnel', `${dir}/pg.sock=orders/app`] },
    lib: { services: [{ type: 'database-tunnel', listen: `${dir}/pg.sock`, service: 'orders', username: 'app' }] },
    cliError: '--db-tunnel[0].listen: name the socket <dir>/.s.PGSQL.<port>', libError: 'services[0].listen: name the socket <dir>/.s.PGSQL.<port>',
  }),
  () => ({
    what: 'cluster name with @', cli: { flags: ['--kube-proxy', '127.0.0.1:0=prod@eu'] },
    lib: { services: [{ type: 'kube-proxy', listen: '127.0.0.1:0', cluster: 'prod@eu' }] },
    cliError: '--kube-proxy[0].cluster: "prod@eu" is not a valid cluster name', libError: 'services[0].cluster: "prod@eu" is not a valid cluster name',
  }),
  () => ({
    what: 'bad database user', cli: { flags: ['--db-tunnel', '127.0.0.1:0=orders/a b'] },
    lib: { services: [{ type: 'database-tunnel', listen: '127.0.0.1:0', service: 'orders', username: 'a b' }] },
    cliError: '--db-tunnel[0].username: "a b" is not a valid user name', libError: 'services[0].username: "a b" is not a valid user name',
  }),
  () => ({
    what: 'renewal interval not shorter than the TTL', cli: { flags: ['--certificate-ttl', '10m', '--renewal-interval', '10m'] },
    lib: { certificateTtlMs: 600_000, renewalIntervalMs: 600_000 },
    cliError: '--renewal-interval: (10m) must be shorter than --certificate-ttl (10m)', libError: 'renewalIntervalMs: (10m) must be shorter than certificateTtlMs (10m)',
  }),
  () => ({
    what: 'unknown key', cli: { yaml: 'version: v1\nservices:\n  - { type: kube-proxy, cluster: prod, listen: "127.0.0.1:0", lsiten: x }\n' },
    lib: { services: [{ type: 'kube-proxy', cluster: 'prod', listen: '127.0.0.1:0', lsiten: 'x' } as never] },
    cliError: 'services[0]: unknown key "lsiten"', libError: 'services[0]: unknown key "lsiten"',
  }),
  () => ({
    what: 'unknown service type', cli: { yaml: 'version: v1\nservices:\n  - { type: ftp, listen: "127.0.0.1:0" }\n' },
    lib: { services: [{ type: 'ftp', listen: '127.0.0.1:0' } as never] },
    cliError: 'services[0].type: must be ssh-agent, kube-proxy or database-tunnel', libError: 'services[0].type: must be ssh-agent, kube-proxy or database-tunnel',
  }),
  () => ({
    what: 'wrong type', cli: { yaml: 'version: v1\nservices:\n  - { type: database-tunnel, service: o, username: a, listen: "127.0.0.1:0", max_connections: "10" }\n' },
    lib: { services: [{ type: 'database-tunnel', service: 'o', username: 'a', listen: '127.0.0.1:0', maxConnections: '10' } as never] },
    cliError: 'services[0].max_connections: ', libError: 'services[0].maxConnections: ',
  }),
  () => ({
    what: 'two services on one address', cli: { flags: ['--kube-proxy', '127.0.0.1:8001=a', '--db-tunnel', '127.0.0.1:8001=orders/app'] },
    lib: { services: [{ type: 'kube-proxy', listen: '127.0.0.1:8001', cluster: 'a' }, { type: 'database-tunnel', listen: '127.0.0.1:8001', service: 'orders', username: 'app' }] },
    cliError: '--db-tunnel[0]: listens on 127.0.0.1:8001, already used by --kube-proxy[0]', libError: 'services[1]: listens on 127.0.0.1:8001, already used by services[0]',
  }),
  () => ({
    what: 'bad diagnostics address', cli: { flags: ['--diag-addr', 'localhost'] }, lib: { diagnostics: 'localhost' },
    cliError: '--diag-addr: must be host:port', libError: 'diagnostics: must be host:port',
  }),
]

describe('a bad agent config is refused before the join token is spent (memid start and startAgent)', () => {
  let auth: AuthFixture
  let token: string
  let tokenFile: string
  let cleanup: () => void

  before(async () => {
    ;({ dir, cleanup } = tempDir('memid-cfg-'))
    auth = await startAuth()
    token = await auth.bot('cfg')
    tokenFile = path.join(dir, 'token')
    writeFileSync(tokenFile, token, { mode: 0o600 })
  })
  after(async () => {
    await auth?.stop()
    cleanup?.()
  })

  for (const [i, make] of CASES.entries()) {
    it(`case ${i}: the same message names the flag/key (CLI, exit 2) and the option (startAgent)`, async (t) => {
      const c = make()
      t.diagnostic(c.what)
      const config = c.cli.yaml !== undefined ? path.join(dir, `agent-${i}.yaml`) : undefined
      if (config !== undefined && c.cli.yaml !== undefined) writeFileSync(config, c.cli.yaml)
      const r = await runDist([
        'start', '--auth-server', auth.addr, '--ca-pin', auth.caPin, '--token-file', tokenFile, '--control-socket', path.join(dir, 'c.sock'),
        ...(config !== undefined ? ['--config', config] : []), ...(c.cli.flags ?? []),
      ])
      assert.equal(r.code, 2, `${c.what}: ${r.stderr}`)
      assert.ok(r.stderr.startsWith(`memid: ${c.cliError}`), `${c.what}: "${r.stderr.trim()}" should start with "memid: ${c.cliError}"`)
      assert.equal(r.stderr.trim().split('\n').length, 1, 'one line')

      let caught: unknown
      try {
        startAgent({ authServer: auth.addr, caPins: [auth.caPin], token, ...c.lib })
      } catch (err) {
        caught = err
      }
      assert.ok(caught instanceof ConfigError, `${c.what}: startAgent should throw a ConfigError, got ${String(caught)}`)
      assert.ok(caught.message.startsWith(c.libError), `${c.what}: "${caught.message}" should start with "${c.libError}"`)
      assert.doesNotMatch(caught.message, /\n/)
    })
  }

  it('the token was never consumed: memid tokens ls shows it unused, and it still joins', async () => {
    const ls = await auth.cli(['tokens', 'ls', '--format', 'json'])
    assert.equal(ls.code, 0, ls.stderr)
    const tokens = JSON.parse(ls.stdout).items as { bot: string; usedByInstance?: string }[]
    const mine = tokens.filter((x) => x.bot === 'cfg')
    assert.equal(mine.length, 1)
    assert.equal(mine[0]?.usedByInstance, undefined, 'unused')
    const agent = startAgent({ authServer: auth.addr, caPins: [auth.caPin], token })
    await agent.ready
    assert.equal(agent.status().bot, 'cfg')
    await agent.stop()
  })
})
