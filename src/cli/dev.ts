import os from 'node:os'
import path from 'node:path'
import { readFileSync } from 'node:fs'
import { MemidError } from '../core/errors.ts'
import { createLogger } from '../core/log.ts'
import { defaultControlSocket, loadAgentConfig, parseAuthServer } from '../config/agent.ts'
import { startAuthServer } from '../auth/server.ts'
import { ensureDataDir } from '../config/auth.ts'
import { SqliteStore } from '../storage/sqlite.ts'
import { createAgent } from '../agent/agent.ts'
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
  const runtime = path.dirname(defaultControlSocket())
  const devDir = f.dataDir !== undefined ? path.resolve(f.dataDir) : path.join(runtime, 'dev')
  const dbPath = f.dbName ? `dev/${f.dbUser}/${f.dbName}` : `dev/${f.dbUser}`
  // The agent's whole config is resolved before the auth service starts; only the auth
  // address, its pin and the token are unknown yet, and are filled in once they exist.
  const planned = loadAgentConfig({
    authServer: '127.0.0.1:1', caPin: [`sha256:${'0'.repeat(64)}`], token: 'dev',
    certificateTtl: f.certificateTtl, renewalInterval: f.renewalInterval, diagAddr: f.diagAddr, logFormat: f.logFormat,
    controlSocket: defaultControlSocket(), sshAgent: path.join(devDir, 'agent.sock'),
    ...(f.kubeServer ? { kubeProxy: [`${f.kubeListen}=dev`] } : {}),
    ...(f.dbUri ? { dbTunnel: [`${f.dbListen}=${dbPath}`] } : {}),
  }, {})
  const log = createLogger({ format: planned.logFormat })
  if (f.dataDir !== undefined) ensureDataDir(devDir)
  const me = os.userInfo().username

  const auth = await startAuthServer({
    store: SqliteStore.open(f.dataDir !== undefined ? path.join(devDir, 'memid.db') : ':memory:'), listen: f.listen, clusterName: 'dev',
    adminSocket: path.join(devDir, 'admin.sock'), logger: log.child({ component: 'auth' }),
  })
  const kubeCa = readPem(f.kubeCaFile, '--kube-ca-file')
  const dbCa = readPem(f.dbCaFile, '--db-ca-file')
  if (f.kubeServer) {
    // keepCa: with --data-dir the API server keeps trusting the client CA of the last run.
    await existing(auth.admin.removeResource('kube', 'dev', true))
    await auth.admin.addResource('kube', { name: 'dev', uri: f.kubeServer, ...(kubeCa ? { caPem: kubeCa } : {}) })
  }
  if (f.dbUri) {
    await existing(auth.admin.removeResource('db', 'dev', true))
    await auth.admin.addResource('db', { name: 'dev', uri: f.dbUri, ...(dbCa ? { caPem: dbCa } : {}) })
  }
  // With --data-dir a second run finds last run's bot and role: start them afresh.
  await existing(auth.admin.removeBot('dev'))
  await existing(auth.admin.removeRole('dev'))
  await auth.admin.addRole({
    name: 'dev', logins: [...new Set([me, 'deploy'])], kubeClusters: ['*'], kubeUsers: ['dev'], kubeGroups: ['system:masters'],
    databases: ['*'], dbUsers: [f.dbUser], dbNames: ['*'],
  })
  const { token } = await auth.admin.addBot({ name: 'dev', roles: ['dev'] })

  const agent = createAgent({
    ...planned, authServers: [parseAuthServer(auth.address)], caPins: [auth.caPin], onboarding: { method: 'token', token: { kind: 'value', value: token.token } },
  }, { logger: log.child({ component: 'agent' }) })
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
  // The auth service stops after the agent, before the process exits (its admin socket goes too).
  const closed = agent.closed.then(async (exit) => {
    await auth.stop(2_000).catch(() => undefined)
    return exit
  })
  await runAgentProcess(agent, log, closed)
}
