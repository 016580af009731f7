import { readFileSync, writeFileSync, existsSync } from 'node:fs'
import path from 'node:path'
import type { Command } from 'commander'
import { MemidError } from '../core/errors.ts'
import { parseDuration } from '../core/duration.ts'
import { resolveDataDir } from '../config/paths.ts'
import type { Store } from '../storage/store.ts'

const CA_KINDS = ['ssh-user', 'ssh-host', 'tls', 'bot', 'kube-client', 'db-client'] as const
type CaKind = (typeof CA_KINDS)[number]

/** Opens the store of an existing data dir for offline commands (ca-pin, export, sign-host). */
async function openExisting(dataDir?: string): Promise<Store> {
  const dir = resolveDataDir(dataDir)
  const file = path.join(dir, 'memid.db')
  if (!existsSync(file)) throw new MemidError('ERR_NOT_FOUND', `no memid store in ${dir}: run "memid auth start --data-dir ${dir}" first`)
  const { SqliteStore } = await import('../storage/sqlite.ts')
  return SqliteStore.open(file)
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
    .action(async (opts: { config?: string; dataDir?: string; listen?: string; storage?: string; clusterName?: string; logFormat?: string }) => {
      const [{ loadAuthConfig, ensureDataDir }, { createLogger }, { openStore }, { startAuthServer }] = await Promise.all([
        import('../config/auth.ts'), import('../core/log.ts'), import('../storage/open.ts'), import('../auth/server.ts'),
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
      })
      log.info({ listen: server.address, caPin: server.caPin, clusterName: cfg.clusterName, adminSocket: path.join(cfg.dataDir, 'admin.sock') }, 'auth service ready')
      let stopping = false
      const stop = (signal: string) => {
        if (stopping) return
        stopping = true
        log.info({ signal }, 'auth service stopping')
        server.stop(10_000).then(() => {
          log.info('auth service stopped')
          process.exit(0)
        }, (err: unknown) => {
          log.error({ err: (err as Error).message }, 'stop failed')
          process.exit(1)
        })
      }
      process.on('SIGTERM', () => stop('SIGTERM'))
      process.on('SIGINT', () => stop('SIGINT'))
    })

  auth.command('ca-pin')
    .description("print sha256:<hex> of the TLS CA's public key, for agents' --ca-pin")
    .option('--data-dir <dir>', 'data directory')
    .action(async (opts: { dataDir?: string }) => {
      const store = await openExisting(opts.dataDir)
      try {
        const ca = await store.getCa('tls')
        if (!ca) throw new MemidError('ERR_NOT_FOUND', 'the TLS CA does not exist yet: run "memid auth start" first')
        const { spkiPin } = await import('../pki/x509.ts')
        process.stdout.write(`${spkiPin(ca.publicMaterial)}\n`)
      } finally {
        await store.close()
      }
    })

  auth.command('export')
    .description('print a CA: ssh-user, ssh-host (OpenSSH line) or tls, bot, kube-client, db-client (PEM)')
    .requiredOption('--kind <kind>', CA_KINDS.join(' | '))
    .option('--data-dir <dir>', 'data directory')
    .action(async (opts: { kind: string; dataDir?: string }) => {
      if (!CA_KINDS.includes(opts.kind as CaKind)) throw new MemidError('ERR_USAGE', `--kind: must be one of ${CA_KINDS.join(', ')}`)
      const dir = resolveDataDir(opts.dataDir)
      if (!existsSync(path.join(dir, 'memid.db')) && existsSync(path.join(dir, 'admin.sock'))) {
        // An auth service with no store file here (memid dev's in-memory store): ask it.
        const { socketRequest } = await import('./socket-client.ts')
        process.stdout.write(await socketRequest<string>(path.join(dir, 'admin.sock'), 'GET', `/v1/cas/${opts.kind}`, undefined, 'the auth service admin socket', 'is it running?'))
        return
      }
      const store = await openExisting(opts.dataDir)
      try {
        const ca = await store.getCa(opts.kind as CaKind)
        if (!ca) throw new MemidError('ERR_NOT_FOUND', `the ${opts.kind} CA does not exist yet: run "memid auth start" first`)
        process.stdout.write(ca.publicMaterial.endsWith('\n') ? ca.publicMaterial : `${ca.publicMaterial}\n`)
      } finally {
        await store.close()
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
      const store = await openExisting(opts.dataDir)
      try {
        if (!(await store.getCa('ssh-host'))) throw new MemidError('ERR_NOT_FOUND', 'the ssh-host CA does not exist yet: run "memid auth start" first')
        const [{ loadOrCreateCas, caPin }, { signHostCertificate }] = await Promise.all([import('../auth/cas.ts'), import('../auth/sign-host.ts')])
        const cas = await loadOrCreateCas(store, 'memid')
        const cert = signHostCertificate({ caKey: cas.sshHost.key, hosts: opts.host.split(','), publicKeyLine: line, ttlMs })
        writeFileSync(opts.out, cert.endsWith('\n') ? cert : `${cert}\n`, { mode: 0o644 })
        await store.appendAudit({ type: 'cert.issued', success: true, fields: { kind: 'ssh-host', principals: opts.host.split(','), ttlSeconds: Math.round(ttlMs / 1000), by: 'admin' } })
        process.stderr.write(`host certificate for ${opts.host} written to ${opts.out} (CA pin of the cluster: ${caPin(cas)})\n`)
      } finally {
        await store.close()
      }
    })
}
