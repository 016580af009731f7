/**
 * Invariant 1 for the kube proxy: an agent that joins, serves kubectl (discovery, list, a
 * watch held open across renewals, exec over WebSocket and SPDY) through its kube proxy,
 * renews its kube certificate several times and shuts down, traced with `strace -f`,
 * opens no file for writing and creates none other than its unix sockets (and their 0700
 * directories).
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { accessSync, constants, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { startAuth, startAgent, eventually, tempDir, type AuthFixture, type AgentFixture } from '../fixtures/memid.ts'
import { startKubeApiServer, type KubeApiServer } from '../fixtures/kube-apiserver.ts'
import { kubectl, KubectlProcess, requireKubectl, type KubectlOptions } from '../fixtures/kube-client.ts'

function requireStrace(): string {
  try {
    accessSync('/usr/bin/strace', constants.X_OK)
    return '/usr/bin/strace'
  } catch {
    throw new Error('strace is not installed; run: apt-get install -y strace')
  }
}

/** The traced agent's pid: strace's only child. */
function childOf(pid: number): number {
  const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)
  if (kids.length !== 1) throw new Error(`expected one child of strace (${pid}), found: ${kids.join(' ') || 'none'}`)
  return Number(kids[0])
}

const WRITE_FLAGS = /O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND/
/** Character devices any Node process may open read-write; they are not files on disk. */
const DEVICES = new Set(['/dev/null', '/dev/tty', '/dev/urandom', '/dev/random'])

describe('zero disk: an agent serving the kube proxy writes nothing', () => {
  const strace = requireStrace()
  let auth: AuthFixture
  let agent: AgentFixture
  let srv: KubeApiServer
  let tmp: { dir: string; cleanup: () => void }
  let trace: string
  let k: KubectlOptions

  before(async () => {
    requireKubectl()
    tmp = tempDir('memid-kube-strace-')
    trace = path.join(tmp.dir, 'strace.txt')
    auth = await startAuth()
    const exported = await auth.cli(['auth', 'export', '--kind', 'kube-client'])
    assert.equal(exported.code, 0, exported.stderr)
    srv = await startKubeApiServer({ clientCaPem: exported.stdout })
    srv.addPod('web-1')
    const caFile = path.join(tmp.dir, 'apiserver-ca.pem')
    writeFileSync(caFile, srv.caPem)
    assert.equal((await auth.cli(['kube', 'add', 'prod', '--server', srv.url, '--ca-file', caFile])).code, 0)
    const token = await auth.bot('kbot', ['--kube-clusters', 'prod', '--kube-users', 'ci', '--kube-groups', 'deployers'])
    agent = startAgent({
      auth, token, dir: path.join(tmp.dir, 'agent'),
      args: ['--certificate-ttl', '6s', '--renewal-interval', '2s', '--kube-proxy', '127.0.0.1:0=prod'],
      wrap: [strace, '-f', '-qq', '-o', trace, '-e', 'trace=%file,%desc,bind'],
    })
    await agent.ready
    const kc = await agent.cli(['kubeconfig'])
    assert.equal(kc.code, 0, kc.stderr)
    // The test (a user), not the agent, saves the kubeconfig.
    const file = path.join(tmp.dir, 'kubeconfig')
    writeFileSync(file, kc.stdout)
    k = { home: path.join(tmp.dir, 'home'), env: { KUBECONFIG: file } }
  })

  after(async () => {
    if (agent && agent.process.proc.exitCode === null) {
      try {
        process.kill(childOf(agent.process.proc.pid as number), 'SIGKILL')
      } catch {
        // already gone
      }
    }
    await agent?.stop()
    await auth?.stop()
    await srv?.stop()
    tmp?.cleanup()
  })

  it('join, kubectl get/watch/exec, three renewals and SIGTERM leave no file written', async () => {
    const serial = async () => ((await agent.status()).services as Record<string, any>[]).find((s) => s.name === 'kube-proxy:prod')?.serial as string
    const watch = new KubectlProcess(['get', 'pods', '--watch'], k)
    try {
      await watch.waitFor(/^web-1\s/m, 30_000)
      const serials = new Set([await serial()])
      await eventually(async () => {
        serials.add(await serial())
        return serials.size >= 4
      }, 30_000, 'three kube certificate renewals')
      srv.addPod('late')
      await watch.waitFor(/^late\s/m)
    } finally {
      await watch.stop()
    }
    const ex = await kubectl(['exec', 'web-1', '--', 'echo', 'hi'], k)
    assert.equal(ex.stdout, 'hi\n', ex.stderr)
    const spdy = await kubectl(['exec', 'web-1', '--', 'echo', 'hi'], { ...k, env: { ...k.env, KUBECTL_REMOTE_COMMAND_WEBSOCKETS: 'false' } })
    assert.equal(spdy.stdout, 'hi\n', spdy.stderr)
    assert.ok(new Set(srv.requests.map((r) => r.serial)).size >= 2, 'requests were made with more than one certificate')

    process.kill(childOf(agent.process.proc.pid as number), 'SIGTERM')
    assert.equal(await agent.process.exited, 0, 'agent (under strace) exits 0 on SIGTERM')

    const lines = readFileSync(trace, 'utf8').split('\n')
    const offending: string[] = []
    const socketDir = path.dirname(agent.controlSocket)
    for (const line of lines) {
      if (/ = -1 /.test(line) || line.includes('<unfinished') || line.includes('resumed>')) continue
      const m = /^\d+\s+(\w+)\((.*)\)\s+=\s+\d+/.exec(line)
      if (!m) continue
      const [, call, argText] = m as unknown as [string, string, string]
      const file = /"([^"]*)"/.exec(argText)?.[1] ?? ''
      if ((call === 'open' || call === 'openat' || call === 'openat2') && WRITE_FLAGS.test(argText) && !DEVICES.has(file)) offending.push(line)
      else if (call === 'creat' || call.startsWith('rename') || call.startsWith('link') || call.startsWith('symlink') || call === 'truncate') offending.push(line)
      else if ((call === 'mkdir' || call === 'mkdirat') && !(socketDir === file || socketDir.startsWith(`${file}/`))) offending.push(line)
      else if (call === 'mknod' || call === 'mknodat') offending.push(line)
    }
    assert.deepEqual(offending, [], `the agent wrote to disk:\n${offending.join('\n')}`)
    assert.ok(lines.some((l) => /bind\(\d+, \{sa_family=AF_INET, sin_port=htons\(\d+\), sin_addr=inet_addr\("127\.0\.0\.1"\)\}/.test(l)), 'the trace saw the kube proxy bind')
  })
})
