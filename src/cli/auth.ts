import { readFileSync, writeFileSync, existsSync } from 'node:fs'
import path from 'node:path'
import type { Command } from 'commander'
import { MemidError } from '../core/errors.ts'
import { hardenProcess } from '../core/harden.ts'
import { AUTH_NODE_FLAGS } from '../core/gc.ts'
import { parseDuration } from '../core/duration.ts'
import { resolveDataDir } from '../config/paths.ts'
import { EXIT_ERROR, EXIT_OK } from './exit.ts'

const CA_KINDS = ['ssh-user', 'ssh-host', 'tls', 'bot', 'kube-client', 'db-client'] as const
type CaKind = (typeof CA_KINDS)[number]
/** The client CAs are per resource: the option that names it. */
const NAME_OPTION: Partial<Record<CaKind, 'cluster' | 'database'>> = { 'kube-client': 'cluster', 'db-client': 'database' }

/** What the offline CA commands need, from a local store or from the running server. */
interface CaAccess {
  exportCa(kind: string, name?: string): Promise<string>
  signHost(body: { hosts: string[]; publicKey: string; ttl: string }): Promise<{ certificate: string }>
  close(): Promise<void>
}

/**
 * The data dir's SQLite store when it is here; otherwise the running auth service's admin
 * socket (PostgreSQL storage, or memid dev's in-memory store). Both use the same admin
 * operations, so either path validates and audits alike.
 */
async function caAccess(dataDir?: string): Promise<CaAccess> {
  const dir = resolveDataDir(dataDir)
  const file = path.join(dir, 'memid.db')
  const sock = path.join(dir, 'admin.sock')
  if (existsSync(file)) {
    const [{ SqliteStore }, { AdminService }, { loadOrCreateCas }] = await Promise.all([
      import('../storage/sqlite.ts'), import('../auth/admin.ts'), import('../auth/cas.ts'),
    ])
    const store = SqliteStore.open(file)
    try {
      if (!(await store.getCa('ssh-host'))) throw new MemidError('ERR_NOT_FOUND', `the CAs in ${dir} do not exist yet: run "memid auth start --data-dir ${dir}" first`)
      const cas = await loadOrCreateCas(store, 'memid')
      const admin = new AdminService({ store, clock: { now: () => Date.now() }, audit: async (ev) => void (await store.appendAudit(ev)), sshHostCa: cas.sshHost.key })
      return { exportCa: (k, n) => admin.exportCa(k, n), signHost: (b) => admin.signHost(b), close: () => store.close() }
    } catch (err) {
      await store.close()
      throw err
    }
  }
  if (existsSync(sock)) {
    const { socketRequest } = await import('./socket-client.ts')
    const call = <T>(method: string, p: string, body?: unknown) => socketRequest<T>(sock, method, p, body, 'the auth service admin socket', `is "memid auth start --data-dir ${dir}" running?`)
    return {
      exportCa: (k, n) => call<string>('GET', `/v1/cas/${encodeURIComponent(k)}${n === undefined ? '' : `/${encodeURIComponent(n)}`}`),
      signHost: (b) => call<{ certificate: string }>('POST', '/v1/sign-host', b),
      close: async () => undefined,
    }
  }
  throw new MemidError('ERR_NOT_FOUND', `no memid store or running auth service in ${dir}: run "memid auth start --data-dir ${dir}" first`)
}

export function registerAuthCommands(program: Command): void {
  const auth = program.command('auth').description('the auth service: the cluster that bots join')

  auth.command('start')
    .description('start the auth service')
    .option('--config <file>', 'auth.yaml')
    .option('--data-dir <dir>', 'data directory (default ./memid-data or $MEMID_DATA_DIR)')
    .option('--listen <host:port>', 'API address (default 127.0.0.1:3025; port 0 picks a free one)')
    .option('--storage <uri>', 'sqlite:PATH (default <data-dir>/memid.db) or postgres://USER@HOST:PORT/DB')
    .option('--cluster-name <name>', 'cluster name (default memid)')
    .option('--log-format <format>', 'json or text', undefined)
    .option('--workers <n>', 'API worker threads sharing the port (default: the number of CPUs)')
    .action(async (opts: { config?: string; dataDir?: string; listen?: string; storage?: string; clusterName?: string; logFormat?: string; workers?: string }) => {
      hardenProcess(process.env, AUTH_NODE_FLAGS)
      const [{ loadAuthConfig, ensureDataDir }, { createLogger }, { openStore }, { startAuthServer }, { runUntilSignal }] = await Promise.all([
        import('../config/auth.ts'), import('../core/log.ts'), import('../storage/open.ts'), import('../auth/server.ts'), import('./run.ts'),
      ])
      const cfg = loadAuthConfig(opts)
      const log = createLogger({ format: cfg.logFormat, base: { component: 'auth' } })
      ensureDataDir(cfg.dataDir)
      if (opts.storage !== undefined && /^postgres(ql)?:\/\/[^/?#@]*:[^/?#]+@/i.test(opts.storage)) {
        // Like --token VALUE: accepted, but argv is readable by every user of the machine.
        log.warn('--storage carries a password, and argv is world-readable: prefer PGPASSWORD, ~/.pgpass or storage: in --config')
      }
      const store = await openStore(cfg.storage)
      const server = await startAuthServer({
        store, listen: cfg.listen, clusterName: cfg.clusterName, adminSocket: path.join(cfg.dataDir, 'admin.sock'), logger: log,
        workers: { count: cfg.workers, storage: cfg.storage, logFormat: cfg.logFormat },
        retention: {
          ...(cfg.instanceTtlMs !== undefined ? { instanceTtlMs: cfg.instanceTtlMs } : {}),
          ...(cfg.auditRetentionMs !== undefined ? { auditRetentionMs: cfg.auditRetentionMs } : {}),
        },
      })
      log.info({ listen: server.address, caPin: server.caPin, clusterName: cfg.clusterName, adminSocket: path.join(cfg.dataDir, 'admin.sock'), workers: cfg.workers }, 'auth service ready')
      let closed!: (exit: { code: number }) => void
      // A worker that keeps dying (each is restarted with backoff) leaves a process that
      // serves only part of its connections: stop it all, for the supervisor to restart.
      void server.failed?.then((reason) => {
        log.error({ reason }, 'auth worker failed: stopping')
        void server.stop(10_000).finally(() => closed({ code: EXIT_ERROR }))
      })
      await runUntilSignal({
        ready: Promise.resolve(),
        closed: new Promise((resolve) => (closed = resolve)),
        stop: () => server.stop(10_000).then(() => {
          log.info('auth service stopped')
          closed({ code: EXIT_OK })
        }, (err: unknown) => {
          log.error({ err: (err as Error).message }, 'stop failed')
          closed({ code: EXIT_ERROR })
        }),
      }, log, { stopping: 'auth service stopping' })
    })

  auth.command('ca-pin')
    .description("print sha256:<hex> of the TLS CA's public key, for agents' --ca-pin")
    .option('--data-dir <dir>', 'data directory')
    .action(async (opts: { dataDir?: string }) => {
      const access = await caAccess(opts.dataDir)
      try {
        const { spkiPin } = await import('../pki/x509.ts')
        process.stdout.write(`${spkiPin(await access.exportCa('tls'))}\n`)
      } finally {
        await access.close()
      }
    })

  auth.command('export')
    .description('print a CA: ssh-user, ssh-host (OpenSSH line) or tls, bot, kube-client --cluster NAME, db-client --database NAME (PEM)')
    .requiredOption('--kind <kind>', CA_KINDS.join(' | '))
    .option('--cluster <name>', 'the kube cluster whose client CA to print (--kind kube-client)')
    .option('--database <name>', 'the database whose client CA to print (--kind db-client)')
    .option('--data-dir <dir>', 'data directory')
    .action(async (opts: { kind: string; cluster?: string; database?: string; dataDir?: string }) => {
      if (!CA_KINDS.includes(opts.kind as CaKind)) throw new MemidError('ERR_USAGE', `--kind: must be one of ${CA_KINDS.join(', ')}`)
      const want = NAME_OPTION[opts.kind as CaKind]
      for (const o of ['cluster', 'database'] as const) {
        if (opts[o] !== undefined && o !== want) throw new MemidError('ERR_USAGE', `--${o}: only with --kind ${o === 'cluster' ? 'kube-client' : 'db-client'}`)
      }
      const name = want && opts[want]
      if (want !== undefined && name === undefined) {
        throw new MemidError('ERR_USAGE', `--${want}: required with --kind ${opts.kind} (each ${want === 'cluster' ? 'kube cluster' : 'database'} has its own client CA)`)
      }
      const access = await caAccess(opts.dataDir)
      try {
        process.stdout.write(await access.exportCa(opts.kind, name))
      } finally {
        await access.close()
      }
    })

  auth.command('sign-host')
    .description("issue an OpenSSH host certificate from the ssh-host CA for a server's host key")
    .requiredOption('--host <names>', 'host names or addresses, comma-separated')
    .requiredOption('--public-key <file>', "the server's public host key (e.g. /etc/ssh/ssh_host_ed25519_key.pub)")
    .requiredOption('--out <file>', 'where to write the certificate (for sshd HostCertificate)')
    .option('--ttl <duration>', 'validity', '720h')
    .option('--data-dir <dir>', 'data directory')
    .action(async (opts: { host: string; publicKey: string; out: string; ttl: string; dataDir?: string }) => {
      const ttlMs = parseDuration(opts.ttl)
      if (ttlMs === undefined) throw new MemidError('ERR_USAGE', `--ttl: "${opts.ttl}" is not a duration like 720h`)
      let line: string
      try {
        line = readFileSync(opts.publicKey, 'utf8')
      } catch (err) {
        throw new MemidError('ERR_NOT_FOUND', `--public-key: cannot read ${opts.publicKey}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`)
      }
      const access = await caAccess(opts.dataDir)
      try {
        const hosts = opts.host.split(',').map((h) => h.trim()).filter(Boolean)
        const { certificate } = await access.signHost({ hosts, publicKey: line, ttl: opts.ttl })
        writeFileSync(opts.out, certificate, { mode: 0o644 })
        process.stderr.write(`host certificate for ${hosts.join(', ')} written to ${opts.out}\n`)
      } finally {
        await access.close()
      }
    })
}
