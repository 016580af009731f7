import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { defaultWorkers, loadAgentConfig, resolveAgentOptions, type AgentConfig, type AgentFlags } from '../../../src/config/agent.ts'
import { formatAddress } from '../../../src/core/listener.ts'
import { ConfigError, MemidError } from '../../../src/core/errors.ts'

/** The token source of a token-method onboarding. */
const tokenOf = (c: { onboarding: unknown }): unknown => (c.onboarding as { token?: unknown }).token

const PIN = `sha256:${'0123456789abcdef'.repeat(4)}`
const PIN2 = `sha256:${'f'.repeat(64)}`

// The agent config example of SPEC.md, verbatim but for a real pin.
const SPEC_EXAMPLE = `version: v1
auth_server: 127.0.0.1:3025
ca_pins: ["${PIN}"]
onboarding: { join_method: token, token_file: /run/secrets/memid-token }
certificate_ttl: 1h
renewal_interval: 20m
control_socket: /run/memid/control.sock
diagnostics: { listen: 127.0.0.1:9090 }
services:
  - { type: ssh-agent, path: /run/memid/agent.sock }
  - { type: kube-proxy, cluster: prod, listen: 127.0.0.1:8001 }
  - { type: database-tunnel, service: orders, username: app, database: orders, listen: 127.0.0.1:6432 }
`

/** The resolved config in comparable form: addresses as text, services by type, name and address. */
function plain(cfg: AgentConfig) {
  const { authServers, diagnostics, services, ...rest } = cfg
  return {
    ...rest,
    authServers: authServers.map((a) => `${a.host}:${a.port}`),
    ...(diagnostics ? { diagnostics: formatAddress(diagnostics) } : {}),
    services: services.map((s) => ({ type: s.type, name: s.name, address: formatAddress(s.address) })),
  }
}

/** A resolved service's settings, for the keys a test is about. */
function settings(cfg: AgentConfig, i: number): Record<string, unknown> {
  return cfg.services[i]?.settings as Record<string, unknown>
}

const SPEC_CONFIG = {
  authServers: ['127.0.0.1:3025'],
  caPins: [PIN],
  onboarding: { method: 'token', token: { kind: 'file', path: '/run/secrets/memid-token' } },
  certificateTtlMs: 3_600_000,
  renewalIntervalMs: 1_200_000,
  controlSocket: '/run/memid/control.sock',
  diagnostics: '127.0.0.1:9090',
  logFormat: 'json',
  drainMs: 10_000,
  workers: defaultWorkers(),
  services: [
    { type: 'ssh-agent', name: 'ssh-agent', address: '/run/memid/agent.sock' },
    { type: 'kube-proxy', name: 'kube-proxy:prod', address: '127.0.0.1:8001' },
    { type: 'database-tunnel', name: 'db-tunnel:orders', address: '127.0.0.1:6432' },
  ],
}

let dir: string
let n = 0
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'memid-agent-config-'))
})
after(() => rmSync(dir, { recursive: true, force: true }))

function yamlFile(text: string): string {
  const p = path.join(dir, `agent-${++n}.yaml`)
  writeFileSync(p, text)
  return p
}

/** The minimum a config needs besides what a test is about. */
const MIN = `version: v1\nauth_server: 127.0.0.1:3025\nca_pins: ["${PIN}"]\nonboarding: { token_file: /run/secrets/t }\n`

function load(yaml: string | undefined, flags: AgentFlags = {}, env: NodeJS.ProcessEnv = {}): AgentConfig {
  return loadAgentConfig({ ...(yaml !== undefined ? { config: yamlFile(yaml) } : {}), ...flags }, env)
}

/** Asserts a ConfigError whose message starts with the key path. */
function refused(fn: () => unknown, startsWith: string, includes?: RegExp): string {
  let caught: unknown
  try {
    fn()
  } catch (err) {
    caught = err
  }
  assert.ok(caught instanceof ConfigError, `expected a ConfigError, got ${String(caught)}`)
  assert.equal(caught.code, 'ERR_CONFIG')
  assert.ok(caught.message.startsWith(startsWith), `"${caught.message}" should start with "${startsWith}"`)
  if (includes) assert.match(caught.message, includes)
  assert.doesNotMatch(caught.message, /\n/)
  return caught.message
}

const FLAGS: AgentFlags = { authServer: '127.0.0.1:3025', caPin: [PIN], tokenFile: '/run/secrets/t' }

describe('loadAgentConfig: the file', () => {
  it("parses SPEC.md's example into the expected config", () => {
    assert.deepEqual(plain(load(SPEC_EXAMPLE)), SPEC_CONFIG)
    assert.deepEqual(settings(load(SPEC_EXAMPLE), 2), {
      service: 'orders', username: 'app', database: 'orders', listen: '127.0.0.1:6432', address: { kind: 'tcp', host: '127.0.0.1', port: 6432 },
      protocol: 'postgres', maxConnections: 100, connectTimeoutMs: 10_000,
      // Loopback, so no allow_remote; TCP clients served when they run as the agent's user.
      exposure: { allowRemote: false, anyUser: false, ownUid: process.geteuid?.(), uids: new Set([process.geteuid?.()]) },
    })
  })

  it('parses examples/agent.yaml once its pin placeholder is filled in', () => {
    const text = readFileSync(new URL('../../../examples/agent.yaml', import.meta.url), 'utf8')
    assert.match(text, /sha256:REPLACE/)
    assert.deepEqual(plain(load(text.replace(/sha256:REPLACE[A-Za-z_-]*/, PIN))), SPEC_CONFIG)
  })

  it('reads the optional service keys', () => {
    const cfg = load(`${MIN}log_format: text
services:
  - { type: ssh-agent, path: /run/m/agent.sock, key_type: rsa, principals: [deploy, ops] }
  - { type: kube-proxy, cluster: prod, listen: /run/m/kube.sock, allowed_hosts: [localhost], user: ci-bot }
  - type: database-tunnel
    service: cache
    username: default
    listen: 127.0.0.1:6380
    protocol: tls
    max_connections: 5
    connect_timeout: 3s
    idle_timeout: 10m
`)
    assert.equal(cfg.logFormat, 'text')
    assert.deepEqual(plain(cfg).services, [
      { type: 'ssh-agent', name: 'ssh-agent', address: '/run/m/agent.sock' },
      { type: 'kube-proxy', name: 'kube-proxy:prod', address: '/run/m/kube.sock' },
      { type: 'database-tunnel', name: 'db-tunnel:cache', address: '127.0.0.1:6380' },
    ])
    assert.equal(settings(cfg, 0).keyType, 'rsa')
    assert.deepEqual(settings(cfg, 0).principals, ['deploy', 'ops'])
    assert.equal(settings(cfg, 1).user, 'ci-bot')
    assert.equal((settings(cfg, 1).allowedHosts as { allows(h: string): boolean }).allows('localhost:1'), true)
    assert.equal((settings(cfg, 1).allowedHosts as { allows(h: string): boolean }).allows('127.0.0.1:1'), false)
    const db = settings(cfg, 2)
    assert.deepEqual([db.protocol, db.maxConnections, db.connectTimeoutMs, db.idleTimeoutMs], ['tls', 5, 3_000, 600_000])
  })

  it('unknown keys are refused, naming them and where they are', () => {
    refused(() => load(`${MIN}renewal_intervall: 5m\n`), 'unknown key "renewal_intervall"')
    refused(() => load(`${MIN}onboarding_token: x\nextra: 1\n`), 'unknown keys "onboarding_token", "extra"')
    refused(() => load(`${MIN}diagnostics: { listen: 127.0.0.1:9090, port: 1 }\n`), 'diagnostics: unknown key "port"')
    refused(() => load(`${MIN}services:\n  - { type: ssh-agent, path: /run/m/a.sock }\n  - { type: kube-proxy, cluster: p, listen: 127.0.0.1:1, lsiten: x }\n`),
      'services[1]: unknown key "lsiten"')
  })

  it('wrong types are refused with the key path', () => {
    refused(() => load(`${MIN}certificate_ttl: 5\n`), 'certificate_ttl: ', /string/)
    refused(() => load(`${MIN}renewal_interval: 20 minutes\n`), 'renewal_interval: ', /duration/)
    refused(() => load(`version: v1\nca_pins: "${PIN}"\n`), 'ca_pins: ', /array/)
    refused(() => load(`${MIN}services: {}\n`), 'services: ', /array/)
    refused(() => load(`${MIN}services:\n  - { type: database-tunnel, service: o, username: a, listen: 127.0.0.1:1, max_connections: "10" }\n`),
      'services[0].max_connections: ', /number/)
    refused(() => load(`${MIN}services:\n  - { type: ftp, listen: 127.0.0.1:1 }\n`), 'services[0].type: must be ssh-agent, kube-proxy or database-tunnel')
    refused(() => load(`${MIN}services:\n  - { type: kube-proxy, cluster: prod, listen: "0.0.0.0:99999" }\n`), 'services[0].listen: ', /out of range/)
    refused(() => load(`${MIN}services:\n  - { type: ssh-agent, path: agent.sock }\n`), 'services[0].path: ', /absolute/)
    refused(() => load(MIN.replace(PIN, 'sha256:abc')), 'ca_pins[0]: ', /64 hex/)
    refused(() => load(`${MIN}log_format: yaml\n`), 'log_format: ')
  })

  it('version must be v1, also when the file is empty', () => {
    refused(() => load(MIN.replace('version: v1', 'version: v2')), 'version: must be v1')
    refused(() => load(''), 'version: must be v1')
  })

  it('unreadable or malformed YAML is a ConfigError, not a crash', () => {
    refused(() => loadAgentConfig({ config: path.join(dir, 'missing.yaml') }, {}), '--config: ', /ENOENT/)
    refused(() => load('version: v1\nservices: [\n'), path.join(dir, ''), /not valid YAML/)
    refused(() => load(`${MIN}auth_server: 127.0.0.1:1\n`), path.join(dir, ''), /unique/)
  })

  it('YAML alias bombs are refused', () => {
    const bomb = ['a: &a [x, x, x, x, x, x, x, x, x]', ...'bcdefghij'.split('').map((k, i) => `${k}: &${k} [${Array(9).fill(`*${'abcdefghij'[i]}`).join(', ')}]`)]
    refused(() => load(`${bomb.join('\n')}\n`), path.join(dir, ''), /not valid YAML/)
  })
})

describe('loadAgentConfig: flags', () => {
  it('flags alone are enough', () => {
    const cfg = load(undefined, { ...FLAGS, controlSocket: '/run/m/c.sock' })
    assert.deepEqual(cfg.authServers, [{ host: '127.0.0.1', port: 3025 }])
    assert.deepEqual(cfg.caPins, [PIN])
    assert.equal(cfg.certificateTtlMs, 3_600_000, 'default TTL 1h')
    assert.equal(cfg.renewalIntervalMs, 1_200_000, 'default interval 20m')
    assert.deepEqual(cfg.services, [])
    assert.equal(cfg.diagnostics, undefined)
    assert.equal(cfg.controlSocket, '/run/m/c.sock')
  })

  it('flags override the file', () => {
    const cfg = load(SPEC_EXAMPLE, {
      authServer: 'auth.example.com:443', caPin: [PIN2], tokenFile: '/other/token', certificateTtl: '30m', renewalInterval: '5m',
      controlSocket: '/run/other/control.sock', diagAddr: '127.0.0.1:9999', logFormat: 'text',
    })
    assert.deepEqual(cfg.authServers, [{ host: 'auth.example.com', port: 443 }])
    assert.deepEqual(cfg.caPins, [PIN2])
    assert.deepEqual(tokenOf(cfg), { kind: 'file', path: '/other/token' })
    assert.equal(cfg.certificateTtlMs, 1_800_000)
    assert.equal(cfg.renewalIntervalMs, 300_000)
    assert.equal(cfg.controlSocket, '/run/other/control.sock')
    assert.deepEqual(cfg.diagnostics, { kind: 'tcp', host: '127.0.0.1', port: 9999 })
    assert.equal(cfg.logFormat, 'text')
    assert.equal(cfg.services.length, 3, 'file services are kept')
  })

  it('service flags are added after the file services', () => {
    const cfg = load(MIN, {
      sshAgent: '/run/m/agent.sock', kubeProxy: ['127.0.0.1:8001=prod', '/run/m/kube.sock=staging'],
      dbTunnel: ['127.0.0.1:6432=orders/app/orders', '/run/m/.s.PGSQL.5432=billing/reader'],
    })
    assert.deepEqual(plain(cfg).services, [
      { type: 'ssh-agent', name: 'ssh-agent', address: '/run/m/agent.sock' },
      { type: 'kube-proxy', name: 'kube-proxy:prod', address: '127.0.0.1:8001' },
      { type: 'kube-proxy', name: 'kube-proxy:staging', address: '/run/m/kube.sock' },
      { type: 'database-tunnel', name: 'db-tunnel:orders', address: '127.0.0.1:6432' },
      { type: 'database-tunnel', name: 'db-tunnel:billing', address: '/run/m/.s.PGSQL.5432' },
    ])
    assert.equal(settings(cfg, 3).database, 'orders')
    assert.equal(settings(cfg, 4).username, 'reader')
  })

  it('bad --kube-proxy forms are refused with the flag and the value', () => {
    for (const v of ['127.0.0.1:8001', '=prod', 'prod']) refused(() => load(undefined, { ...FLAGS, kubeProxy: [v] }), '--kube-proxy[0]: ', /LISTEN=CLUSTER/)
    refused(() => load(undefined, { ...FLAGS, kubeProxy: ['127.0.0.1:8001=prod', 'x'] }), '--kube-proxy[1]: ')
    refused(() => load(undefined, { ...FLAGS, kubeProxy: ['127.0.0.1:8001='] }), '--kube-proxy[0].cluster: ', /""/)
    refused(() => load(undefined, { ...FLAGS, kubeProxy: ['127.0.0.1:8001=pr/od'] }), '--kube-proxy[0].cluster: ', /pr\/od/)
    refused(() => load(undefined, { ...FLAGS, kubeProxy: ['nowhere=prod'] }), '--kube-proxy[0].listen: ', /nowhere/)
  })

  it('bad --db-tunnel forms are refused with the flag and the value', () => {
    for (const v of ['127.0.0.1:6432=orders', '127.0.0.1:6432=orders//db', '127.0.0.1:6432=a/b/c/d', '=orders/app', '127.0.0.1:6432', '127.0.0.1:6432=/app']) {
      refused(() => load(undefined, { ...FLAGS, dbTunnel: [v] }), '--db-tunnel[0]: ', /LISTEN=SERVICE\/DBUSER/)
    }
    refused(() => load(undefined, { ...FLAGS, dbTunnel: ['127.0.0.1:6432=orders/a b'] }), '--db-tunnel[0].username: ')
    refused(() => load(undefined, { ...FLAGS, dbTunnel: ['127.0.0.1:6432=-x/app'] }), '--db-tunnel[0].service: ')
  })

  it('--ssh-agent must be an absolute path; only one ssh-agent service', () => {
    refused(() => load(undefined, { ...FLAGS, sshAgent: 'agent.sock' }), '--ssh-agent: ')
    refused(() => load(`${MIN}services:\n  - { type: ssh-agent, path: /run/m/a.sock }\n`, { sshAgent: '/run/m/b.sock' }), 'services: at most one ssh-agent')
  })

  it('auth server and pins are required and checked', () => {
    refused(() => load(undefined, { caPin: [PIN], tokenFile: '/t' }), 'auth_server: is required')
    refused(() => load(undefined, { ...FLAGS, authServer: 'https://auth:3025' }), '--auth-server: ', /HOST:PORT/)
    refused(() => load(MIN.replace('127.0.0.1:3025', 'auth')), 'auth_server: ')
    refused(() => load(undefined, { authServer: '127.0.0.1:1', tokenFile: '/t' }), 'ca_pins: ')
    refused(() => load(undefined, { ...FLAGS, caPin: [PIN, 'sha256:ABC'] }), '--ca-pin: ')
    refused(() => load(undefined, { ...FLAGS, joinMethod: 'iam' }), '--join-method: ')
  })
})

describe('loadAgentConfig: impossible values', () => {
  it('renewal interval >= TTL is refused, naming the key or the flag', () => {
    const m1 = refused(() => load(`${MIN}certificate_ttl: 1h\nrenewal_interval: 1h\n`), 'renewal_interval: ')
    assert.match(m1, /1h.*shorter.*certificate_ttl.*1h/)
    refused(() => load(`${MIN}certificate_ttl: 10m\nrenewal_interval: 20m\n`), 'renewal_interval: ')
    refused(() => load(MIN, { certificateTtl: '10m' }), 'renewal_interval: ', /20m/)
    refused(() => load(MIN, { renewalInterval: '2h' }), '--renewal-interval: ')
    assert.equal(load(MIN, { certificateTtl: '21m' }).renewalIntervalMs, 1_200_000, 'just under the TTL is fine')
  })

  it('too short TTL or interval is refused', () => {
    refused(() => load(MIN, { certificateTtl: '4s', renewalInterval: '1s' }), '--certificate-ttl: ')
    refused(() => load(MIN, { certificateTtl: '10s', renewalInterval: '500ms' }), '--renewal-interval: ')
    refused(() => load(MIN, { certificateTtl: 'soon' }), '--certificate-ttl: ')
  })

  it('duplicate listen addresses are refused, also spelled differently', () => {
    refused(() => load(`${MIN}services:
  - { type: kube-proxy, cluster: a, listen: 127.0.0.1:8001 }
  - { type: kube-proxy, cluster: b, listen: 127.0.0.1:8001 }
`), 'services[1]: ', /already used by services\[0\]/)
    refused(() => load(`${MIN}services:\n  - { type: kube-proxy, cluster: a, listen: 127.0.0.1:8001 }\n`, { dbTunnel: ['127.0.0.1:8001=orders/app'] }),
      '--db-tunnel[0]: ', /127\.0\.0\.1:8001, already used by services\[0\]/)
    refused(() => load(undefined, { ...FLAGS, sshAgent: '/run/m/agent.sock', kubeProxy: ['/run/m//agent.sock=prod'] }), '--kube-proxy[0]: ', /already used by --ssh-agent/)
    refused(() => load(undefined, { ...FLAGS, kubeProxy: ['/run/m/k.sock=a', '/run/m/./k.sock=b'] }), '--kube-proxy[1]: ', /already used by --kube-proxy\[0\]/)
    assert.equal(load(undefined, { ...FLAGS, kubeProxy: ['127.0.0.1:8001=a', '127.0.0.1:8002=b'] }).services.length, 2)
  })

  it('diagnostics address is checked', () => {
    refused(() => load(undefined, { ...FLAGS, diagAddr: 'localhost' }), '--diag-addr: ')
    refused(() => load(`${MIN}diagnostics: { listen: "127.0.0.1:70000" }\n`), 'diagnostics.listen: ')
  })

  it('workers: one per CPU up to 4 by default; the file key, the flag (which wins) and the option are checked', () => {
    assert.ok(defaultWorkers() >= 1 && defaultWorkers() <= 4)
    assert.equal(load(MIN).workers, defaultWorkers())
    assert.equal(load(`${MIN}workers: 3\n`).workers, 3)
    assert.equal(load(`${MIN}workers: 3\n`, { workers: '1' }).workers, 1)
    refused(() => load(`${MIN}workers: 0\n`), 'workers: must be a whole number from 1 to 64')
    refused(() => load(`${MIN}workers: two\n`), 'workers: ')
    refused(() => load(undefined, { ...FLAGS, workers: '1.5' }), '--workers: ')
    refused(() => load(undefined, { ...FLAGS, workers: '65' }), '--workers: ')
    refused(() => resolveAgentOptions({ authServer: '127.0.0.1:3025', caPins: [PIN], token: 't', workers: -1 }), 'workers: ')
    assert.equal(resolveAgentOptions({ authServer: '127.0.0.1:3025', caPins: [PIN], token: 't', workers: 2 }).workers, 2)
  })
})

describe('loadAgentConfig: the join token source', () => {
  it('--token-file PATH names a file and never reads it here', () => {
    assert.deepEqual(tokenOf(load(undefined, { ...FLAGS, tokenFile: path.join(dir, 'does-not-exist') })), { kind: 'file', path: path.join(dir, 'does-not-exist') })
  })

  it("--token-file - is stdin", () => {
    assert.deepEqual(tokenOf(load(undefined, { ...FLAGS, tokenFile: '-' })), { kind: 'stdin' })
  })

  it('$MEMID_TOKEN is used when no flag names a token, and its value is not copied into the config', () => {
    const secret = 'tok-0123456789ab.abcdefghijabcdefghijabcdefghijabcdefghijabc'
    const cfg = load(undefined, { authServer: '127.0.0.1:1', caPin: [PIN] }, { MEMID_TOKEN: secret })
    assert.deepEqual(tokenOf(cfg), { kind: 'env' })
    assert.ok(!JSON.stringify(cfg).includes(secret))
  })

  it('$MEMID_TOKEN wins over the file, a flag wins over $MEMID_TOKEN', () => {
    const env = { MEMID_TOKEN: 'x' }
    assert.deepEqual(tokenOf(load(MIN, {}, env)), { kind: 'env' })
    assert.deepEqual(tokenOf(load(MIN, { tokenFile: '/f' }, env)), { kind: 'file', path: '/f' })
    assert.deepEqual(tokenOf(load(MIN, { token: 'literal' }, env)), { kind: 'value', value: 'literal' })
    assert.deepEqual(tokenOf(load(MIN, {}, { MEMID_TOKEN: '' })), { kind: 'file', path: '/run/secrets/t' }, 'an empty variable is no token')
  })

  it('--token VALUE is accepted (the CLI warns about argv)', () => {
    assert.deepEqual(tokenOf(load(undefined, { authServer: '127.0.0.1:1', caPin: [PIN], token: 'v' })), { kind: 'value', value: 'v' })
  })

  it('no token source at all is refused with the ways to give one', () => {
    refused(() => load(undefined, { authServer: '127.0.0.1:1', caPin: [PIN] }), 'onboarding.token_file: ', /--token-file.*MEMID_TOKEN/)
  })
})


describe('loadAgentConfig: platform joins', () => {
  const base = { authServer: '127.0.0.1:3025', caPin: [PIN] }
  const envError = (fn: () => unknown): string => {
    try {
      fn()
    } catch (err) {
      assert.ok(err instanceof MemidError && err.code === 'ERR_JOIN_ENV_MISSING', String(err))
      return err.message
    }
    assert.fail('expected ERR_JOIN_ENV_MISSING')
  }

  it('github takes its JWT from the Actions endpoint, and says which permission is missing', () => {
    const env = { ACTIONS_ID_TOKEN_REQUEST_URL: 'https://t.example/x?api-version=2.0', ACTIONS_ID_TOKEN_REQUEST_TOKEN: 'r' }
    assert.deepEqual(load(undefined, { ...base, joinMethod: 'github', joinToken: 'gh-deploy' }, env).onboarding, { method: 'github', tokenName: 'gh-deploy', idToken: { kind: 'github' } })
    assert.match(envError(() => load(undefined, { ...base, joinMethod: 'github', joinToken: 'gh' }, {})), /ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set: the job needs "permissions: id-token: write"/)
    assert.match(envError(() => load(undefined, { ...base, joinMethod: 'github', joinToken: 'gh' }, { ACTIONS_ID_TOKEN_REQUEST_URL: 'https://x' })), /ACTIONS_ID_TOKEN_REQUEST_TOKEN is not set/)
    refused(() => load(undefined, { ...base, joinMethod: 'github', joinToken: 'gh', idTokenFile: '/t' }, env), '--id-token-file: is not used by the github join method')
  })

  it('gitlab and oidc read $MEMID_ID_TOKEN or --id-token-file; kubernetes defaults to the projected token path', () => {
    assert.deepEqual(load(undefined, { ...base, joinMethod: 'gitlab', joinToken: 'gl' }, { MEMID_ID_TOKEN: 'a.b.c' }).onboarding, { method: 'gitlab', tokenName: 'gl', idToken: { kind: 'env' } })
    assert.deepEqual(load(undefined, { ...base, joinMethod: 'oidc', joinToken: 'o', idTokenFile: '/run/jwt' }).onboarding, { method: 'oidc', tokenName: 'o', idToken: { kind: 'file', path: '/run/jwt' } })
    assert.match(envError(() => load(undefined, { ...base, joinMethod: 'gitlab', joinToken: 'gl' })), /^--join-method gitlab: no ID token: set \$MEMID_ID_TOKEN \(an id_tokens: entry of the job in \.gitlab-ci\.yml\) or give --id-token-file PATH$/)
    assert.deepEqual(load(undefined, { ...base, joinMethod: 'kubernetes', joinToken: 'k' }).onboarding, { method: 'kubernetes', tokenName: 'k', idToken: { kind: 'file', path: '/var/run/secrets/tokens/memid' } })
    const file = `version: v1\nauth_server: 127.0.0.1:3025\nca_pins: ["${PIN}"]\nonboarding: { join_method: kubernetes, join_token: k8s-ci, id_token_file: /var/run/secrets/tokens/m }\n`
    assert.deepEqual(load(file).onboarding, { method: 'kubernetes', tokenName: 'k8s-ci', idToken: { kind: 'file', path: '/var/run/secrets/tokens/m' } })
  })

  it('names the flag that does not fit the method', () => {
    refused(() => load(undefined, { ...base, joinMethod: 'kubernetes' }), "--join-token: the kubernetes join method needs the token's name")
    refused(() => load(undefined, { ...base, joinMethod: 'oidc', joinToken: 'o', tokenFile: '/t' }), '--token-file: is for --join-method token')
    refused(() => load(undefined, { ...FLAGS, joinToken: 'gh' }), '--join-token: is for the github, gitlab, kubernetes and oidc join methods')
    refused(() => load(undefined, { ...base, joinMethod: 'azure', joinToken: 'x' }), '--join-method: "azure" is not one of token, github, gitlab, kubernetes, oidc')
    refused(() => load(undefined, { ...base, joinMethod: 'kubernetes', joinToken: 'k', idTokenFile: 'relative' }), '--id-token-file: must be an absolute path')
  })
})

describe('loadAgentConfig: several auth servers', () => {
  const BASE = `version: v1\nca_pins: ["${PIN}"]\nonboarding: { token_file: /run/secrets/t }\n`
  const addrs = (cfg: AgentConfig) => cfg.authServers.map((a) => `${a.host}:${a.port}`)

  it('--auth-server takes a comma-separated list, in order', () => {
    const cfg = load(undefined, { ...FLAGS, authServer: 'a.example:3025,b.example:3025,[::1]:3026' })
    assert.deepEqual(addrs(cfg), ['a.example:3025', 'b.example:3025', '::1:3026'])
  })

  it('auth_servers in the file is a list; auth_server (one) still works; the flag overrides both', () => {
    assert.deepEqual(addrs(load(`${BASE}auth_servers: [a:3025, b:3025, c:3025]\n`)), ['a:3025', 'b:3025', 'c:3025'])
    assert.deepEqual(addrs(load(`${BASE}auth_server: a:3025\n`)), ['a:3025'])
    assert.deepEqual(addrs(load(`${BASE}auth_servers: [a:3025, b:3025]\n`, { authServer: 'z:1' })), ['z:1'])
  })

  it('a bad element is refused before anything is contacted, named by flag or key and position', () => {
    refused(() => load(undefined, { ...FLAGS, authServer: 'a:3025,nope' }), '--auth-server[1]: ', /HOST:PORT/)
    refused(() => load(undefined, { ...FLAGS, authServer: 'a:3025,' }), '--auth-server[1]: is empty')
    refused(() => load(undefined, { ...FLAGS, authServer: 'a:3025,b:1,A:3025' }), '--auth-server[2]: ', /listed twice \(also --auth-server\[0\]\)/)
    refused(() => load(`${BASE}auth_servers: [a:3025, "b:0"]\n`), 'auth_servers[1]: port 0')
    refused(() => load(`${BASE}auth_servers: []\n`), 'auth_servers', /at least one/)
    refused(() => load(`${BASE}auth_server: a:1\nauth_servers: [b:1]\n`), 'auth_servers: give either auth_server or auth_servers')
    refused(() => load(BASE), 'auth_server: is required', /auth_servers/)
  })

  it('startAgent() takes authServer (one, or a comma list) or authServers, not both', () => {
    const base = { caPins: [PIN], token: 't' }
    assert.deepEqual(addrs(resolveAgentOptions({ ...base, authServers: ['a:1', 'b:2'] })), ['a:1', 'b:2'])
    assert.deepEqual(addrs(resolveAgentOptions({ ...base, authServer: 'a:1,b:2' })), ['a:1', 'b:2'])
    refused(() => resolveAgentOptions({ ...base, authServers: ['a:1', 'b'] }), 'authServers[1]: ', /HOST:PORT/)
    refused(() => resolveAgentOptions({ ...base, authServer: 'a:1', authServers: ['b:2'] }), 'authServers: give either authServer or authServers')
    refused(() => resolveAgentOptions(base), 'authServer: is required')
  })
})
