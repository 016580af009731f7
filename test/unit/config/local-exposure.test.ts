import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { loadAgentConfig, type AgentConfig, type AgentFlags } from '../../../src/config/agent.ts'
import { ConfigError } from '../../../src/core/errors.ts'
import type { ResolvedExposure } from '../../../src/core/listener.ts'

const PIN = `sha256:${'0123456789abcdef'.repeat(4)}`
const MIN = `version: v1\nauth_server: 127.0.0.1:3025\nca_pins: ["${PIN}"]\nonboarding: { token_file: /run/secrets/t }\n`
const FLAGS: AgentFlags = { authServer: '127.0.0.1:3025', caPin: [PIN], tokenFile: '/run/secrets/t' }

let dir: string
let n = 0
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'memid-exposure-config-'))
})
after(() => rmSync(dir, { recursive: true, force: true }))

function load(yaml: string | undefined, flags: AgentFlags = {}): AgentConfig {
  let config: string | undefined
  if (yaml !== undefined) {
    config = path.join(dir, `agent-${++n}.yaml`)
    writeFileSync(config, yaml)
  }
  return loadAgentConfig({ ...(config !== undefined ? { config } : {}), ...flags }, {})
}

function refused(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (err: unknown) => err instanceof ConfigError && message.test(err.message) && !err.message.includes('\n'))
}

const exposure = (cfg: AgentConfig, i: number) => (cfg.services[i]?.settings as { exposure: ResolvedExposure }).exposure

describe('agent config: local exposure', () => {
  it('--kube-proxy and --db-tunnel on 0.0.0.0 are refused, naming the flag (there is no flag for allow_remote)', () => {
    refused(() => load(undefined, { ...FLAGS, kubeProxy: ['0.0.0.0:8001=prod'] }), /^--kube-proxy\[0\]\.listen: 0\.0\.0\.0:8001 is not a loopback address or a unix socket.*allow_remote: true/)
    refused(() => load(undefined, { ...FLAGS, dbTunnel: ['127.0.0.1:6432=a/b', '[::]:6433=orders/app'] }), /^--db-tunnel\[1\]\.listen: \[::\]:6433 is not a loopback address/)
  })

  it('in the file, a non-loopback listen is refused naming services[i].listen, and accepted with allow_remote: true', () => {
    refused(() => load(`${MIN}services:\n  - { type: kube-proxy, cluster: prod, listen: 10.0.0.5:8001 }\n`), /^services\[0\]\.listen: 10\.0\.0\.5:8001 is not a loopback address/)
    const cfg = load(`${MIN}services:\n  - { type: kube-proxy, cluster: prod, listen: 0.0.0.0:8001, allow_remote: true }\n` +
      '  - { type: database-tunnel, service: orders, username: app, listen: 0.0.0.0:6432, allow_remote: true }\n')
    assert.equal(exposure(cfg, 0).allowRemote, true)
    assert.equal(exposure(cfg, 1).allowRemote, true)
  })

  it('allowed_users takes names and uids (also unquoted YAML numbers); ["*"] turns the check off', () => {
    const cfg = load(`${MIN}services:\n  - { type: kube-proxy, cluster: prod, listen: 127.0.0.1:8001, allowed_users: [root, 4242] }\n` +
      '  - { type: database-tunnel, service: orders, username: app, listen: 127.0.0.1:6432, allowed_users: ["*"] }\n')
    assert.ok(exposure(cfg, 0).uids.has(0))
    assert.ok(exposure(cfg, 0).uids.has(4242))
    assert.equal(exposure(cfg, 1).anyUser, true)
  })

  it('bad allow_remote and allowed_users values are refused with the key path', () => {
    refused(() => load(`${MIN}services:\n  - { type: kube-proxy, cluster: prod, listen: 127.0.0.1:8001, allow_remote: "yes" }\n`), /^services\[0\]\.allow_remote: /)
    refused(() => load(`${MIN}services:\n  - { type: database-tunnel, service: o, username: a, listen: 127.0.0.1:6432, allowed_users: [no-such-user-here] }\n`),
      /^services\[0\]\.allowed_users\[0\]: no user "no-such-user-here" in \/etc\/passwd/)
    refused(() => load(`${MIN}services:\n  - { type: kube-proxy, cluster: prod, listen: 127.0.0.1:8001, allowed_users: ["*", root] }\n`), /^services\[0\]\.allowed_users: "\*" must be the only entry/)
    refused(() => load(`${MIN}services:\n  - { type: ssh-agent, path: /run/m/a.sock, allowed_users: [root] }\n`), /^services\[0\]: unknown key "allowed_users"/)
  })
})
