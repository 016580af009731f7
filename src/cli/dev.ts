import os from 'node:os'
import path from 'node:path'
import { readFileSync } from 'node:fs'
import { MemidError } from '../core/errors.ts'
import { parseDuration } from '../core/duration.ts'
import { createLogger } from '../core/log.ts'
import { defaultControlSocket, validateServices, type ServiceConfig } from '../config/agent.ts'
import { startAuthServer } from '../auth/server.ts'
import { ensureDataDir } from '../config/auth.ts'
import { SqliteStore } from '../storage/sqlite.ts'
import { startAgent } from '../agent/agent.ts'
import { runAgentProcess } from './start.ts'

export interface DevFlags {
  listen: string
  dataDir?: string
  certificateTtl: string
  renewalInterval: string
  diagAddr: string
  kubeServer?: string
  kubeCaFile?: string
  kubeListen: string
  dbUri?: string
  dbCaFile?: string
  dbUser: string
  dbName?: string
  dbListen: string
  logFormat: string
}

/** Ignores "does not exist" from a clean-up step. */
async function existing(p: Promise<unknown>): Promise<void> {
  try {
    await p
  } catch (err) {
    if (!(err instanceof MemidError && err.code === 'ERR_NOT_FOUND')) throw err
  }
}

function readPem(file: string | undefined, flag: string): string | undefined {
  if (file === undefined) return undefined
  try {
    return readFileSync(file, 'utf8')
  } catch (err) {
    throw new MemidError('ERR_USAGE', `${flag}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`)
  }
}

/**
 * `memid dev`: an auth service on an in-memory store, a role and a bot, a token, and an
 * agent joined to it, all in one process. Nothing is written but the unix sockets (and,
 * with --data-dir, the auth store, so API servers and databases can trust its CAs).
 */
export async function runDev(f: DevFlags): Promise<void> {
  const ttl = parseDuration(f.certificateTtl)
  const interval = parseDuration(f.renewalInterval)
  if (ttl === undefined || interval === undefined || interval >= ttl) {
    throw new MemidError('ERR_CONFIG', '--renewal-interval: must be a duration shorter than --certificate-ttl')
  }
  if (f.logFormat !== 'json' && f.logFormat !== 'text') throw new MemidError('ERR_CONFIG', '--log-format: must be json or text')
  const log = createLogger({ format: f.logFormat })
  const runtime = path.dirname(defaultControlSocket())
  const devDir = f.dataDir !== undefined ? path.resolve(f.dataDir) : path.join(runtime, 'dev')
  if (f.dataDir !== undefined) ensureDataDir(devDir)
  const me = os.userInfo().username

  const auth = await startAuthServer({
    store: SqliteStore.open(f.dataDir !== undefined ? path.join(devDir, 'memid.db') : ':memory:'), listen: f.listen, clusterName: 'dev',
    adminSocket: path.join(devDir, 'admin.sock'), logger: log.child({ component: 'auth' }),
  })
  const kubeCa = readPem(f.kubeCaFile, '--kube-ca-file')
  const dbCa = readPem(f.dbCaFile, '--db-ca-file')
  const services: ServiceConfig[] = [{ type: 'ssh-agent', path: path.join(devDir, 'agent.sock'), keyType: 'ed25519' }]
  if (f.kubeServer) {
    // keepCa: with --data-dir the API server keeps trusting the client CA of the last run.
    await existing(auth.admin.removeResource('kube', 'dev', true))
    await auth.admin.addResource('kube', { name: 'dev', uri: f.kubeServer, ...(kubeCa ? { caPem: kubeCa } : {}) })
    services.push({ type: 'kube-proxy', cluster: 'dev', listen: f.kubeListen })
  }
  if (f.dbUri) {
    await existing(auth.admin.removeResource('db', 'dev', true))
    await auth.admin.addResource('db', { name: 'dev', uri: f.dbUri, ...(dbCa ? { caPem: dbCa } : {}) })
    services.push({ type: 'database-tunnel', service: 'dev', username: f.dbUser, listen: f.dbListen, protocol: 'postgres', maxConnections: 100, connectTimeoutMs: 10_000, ...(f.dbName ? { database: f.dbName } : {}) })
  }
  validateServices(services)
  // With --data-dir a second run finds last run's bot and role: start them afresh.
  await existing(auth.admin.removeBot('dev'))
  await existing(auth.admin.removeRole('dev'))
  await auth.admin.addRole({
    name: 'dev', logins: [...new Set([me, 'deploy'])], kubeClusters: ['*'], kubeUsers: ['dev'], kubeGroups: ['system:masters'],
    databases: ['*'], dbUsers: [f.dbUser], dbNames: ['*'],
  })
  const { token } = await auth.admin.addBot({ name: 'dev', roles: ['dev'] })

  const agent = startAgent({
    authServer: auth.address, caPins: [auth.caPin], token: token.token, certificateTtlMs: ttl, renewalIntervalMs: interval,
    controlSocket: defaultControlSocket(), diagnostics: f.diagAddr, services, logger: log.child({ component: 'agent' }),
  })
  agent.closed.then(() => auth.stop(2_000)).catch(() => undefined)
  agent.ready.then(() => {
    const s = agent.status()
    const svc = (type: string) => s.services.find((x) => x.type === type)
    const diag = s.diagnostics
    const lines = [
      '',
      'memid dev is running — everything below lives in this process\'s memory. Ctrl-C stops it.',
      '',
      `  auth service   ${auth.address} (in-memory store, cluster "dev", CA pin ${auth.caPin})`,
      `  admin          memid bots ls --data-dir ${devDir}`,
      `  bot            dev, instance ${s.instanceId}, generation ${s.generation}, roles: dev (logins ${[...new Set([me, 'deploy'])].join(', ')})`,
      `  status         memid status`,
      `  CAs to trust   memid auth export --kind ssh-user${f.kubeServer ? '|kube-client --cluster dev' : ''}${f.dbUri ? '|db-client --database dev' : ''} --data-dir ${devDir}${f.dataDir === undefined ? '   (in memory: new every run; --data-dir DIR keeps them)' : ''}`,
      `  ssh agent      SSH_AUTH_SOCK=${svc('ssh-agent')?.address} ssh-add -L`,
      `                 ssh -o KnownHostsCommand="memid known-hosts" ${me}@HOST   (sshd trusting: memid auth export --kind ssh-user)`,
      ...(svc('kube-proxy') ? [`  kube proxy     kubectl --server http://${svc('kube-proxy')?.address} get pods`] : []),
      ...(svc('database-tunnel') ? [`  db tunnel      psql "host=${svc('database-tunnel')?.address.split(':')[0]} port=${svc('database-tunnel')?.address.split(':').at(-1)} user=${f.dbUser}${f.dbName ? ` dbname=${f.dbName}` : ''}"`] : []),
      ...(diag ? [`  diagnostics    http://${diag}/readyz  http://${diag}/metrics`] : []),
      '',
    ]
    process.stdout.write(lines.join('\n') + '\n')
  }, () => undefined)
  await runAgentProcess(agent, log)
}
