import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, statSync } from 'node:fs'
import path from 'node:path'
import { MemidProcess, eventually, memidBin, runMemid, tempDir } from '../fixtures/memid.ts'

test('memid dev runs auth + bot + agent in one process and stops cleanly on Ctrl-C', async () => {
  const { dir, cleanup } = tempDir('memid-dev-')
  // XDG_RUNTIME_DIR keeps this run's sockets away from any other memid on the machine.
  const env = { XDG_RUNTIME_DIR: dir }
  const dev = new MemidProcess(memidBin[0], [memidBin[1], 'dev', '--log-format', 'json'], env)
  try {
    await dev.waitFor('agent ready', 30_000)
    await eventually(() => dev.stdout.includes('memid dev is running'), 5_000, 'the summary')
    assert.match(dev.stdout, /ssh agent\s+SSH_AUTH_SOCK=\S+agent\.sock ssh-add -L/)
    const control = path.join(dir, 'memid', 'control.sock')
    assert.equal(statSync(control).mode & 0o777, 0o600)
    const status = await runMemid(['status', '--format', 'json'], { env })
    assert.equal(status.code, 0, status.stderr)
    const s = JSON.parse(status.stdout)
    assert.equal(s.bot, 'dev')
    assert.equal(s.services[0].type, 'ssh-agent')
    assert.equal(s.services[0].status, 'ok')
    const bots = await runMemid(['bots', 'ls', '--data-dir', path.join(dir, 'memid', 'dev'), '--format', 'json'], { env })
    assert.equal(JSON.parse(bots.stdout).items[0].name, 'dev')
    const known = await runMemid(['known-hosts'], { env })
    assert.match(known.stdout, /^@cert-authority \* ssh-ed25519 \S+ memid dev ssh-host CA\n$/)
    // The in-memory store has no file: CA commands go to the running service's admin socket.
    const devDir = path.join(dir, 'memid', 'dev')
    const pin = await runMemid(['auth', 'ca-pin', '--data-dir', devDir], { env })
    assert.equal(pin.code, 0, pin.stderr)
    assert.ok(dev.stdout.includes(pin.stdout.trim()), 'the pin matches the one dev printed')
    const { generateKeyPairSync } = await import('node:crypto')
    const { sshPublicKeyLine } = await import('../../src/pki/openssh.ts')
    const { writeFileSync } = await import('node:fs')
    writeFileSync(path.join(dir, 'host.pub'), sshPublicKeyLine(generateKeyPairSync('ed25519').publicKey, 'host'))
    const signed = await runMemid(['auth', 'sign-host', '--data-dir', devDir, '--host', 'db1.example,10.0.0.9', '--public-key', path.join(dir, 'host.pub'), '--out', path.join(dir, 'host-cert.pub'), '--ttl', '1h'], { env })
    assert.equal(signed.code, 0, signed.stderr)
    const { execFileSync } = await import('node:child_process')
    const shown = execFileSync('ssh-keygen', ['-L', '-f', path.join(dir, 'host-cert.pub')]).toString()
    assert.match(shown, /Type: ssh-ed25519-cert-v01@openssh.com host certificate/)
    assert.match(shown, /db1\.example/)
    const bad = await runMemid(['auth', 'sign-host', '--data-dir', devDir, '--host', 'x', '--public-key', path.join(dir, 'host-cert.pub'), '--out', path.join(dir, 'o')], { env })
    assert.equal(bad.code, 1)
    assert.equal(bad.stderr.trim().split('\n').length, 1)
    dev.signal('SIGINT')
    assert.equal(await dev.exited, 0)
    assert.ok(!existsSync(control), 'control socket removed')
    assert.ok(!existsSync(path.join(dir, 'memid', 'dev', 'agent.sock')), 'agent socket removed')
    assert.ok(!existsSync(path.join(dir, 'memid', 'dev', 'admin.sock')), 'admin socket removed')
  } finally {
    await dev.stop()
    cleanup()
  }
})
