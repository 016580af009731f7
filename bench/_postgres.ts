/**
 * A throwaway PostgreSQL 15 cluster for the auth benchmark: its own data directory in the
 * bench's temp dir, TCP on 127.0.0.1 with a random password (scram-sha-256), and the
 * durability of a production server (fsync and synchronous_commit on). As root the server
 * runs as the `postgres` user, as PostgreSQL demands.
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { appendFileSync, chownSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import { freePort } from './_common.ts'

const run = promisify(execFile)
const PG_BIN = '/usr/lib/postgresql/15/bin'

export interface BenchPostgres {
  /** `postgres://postgres:…@127.0.0.1:port/` + a database name. */
  url(db: string): string
  createDatabase(db: string): Promise<string>
  /** The postmaster's pid (its children are the backends). */
  pid(): number
  stop(): Promise<void>
}

export async function startBenchPostgres(dir: string): Promise<BenchPostgres> {
  if (!existsSync(path.join(PG_BIN, 'postgres'))) throw new Error('PostgreSQL 15 is required: apt-get install postgresql-15')
  let ids: { uid: number; gid: number } | undefined
  if (process.getuid?.() === 0) {
    ids = { uid: Number((await run('id', ['-u', 'postgres'])).stdout.trim()), gid: Number((await run('id', ['-g', 'postgres'])).stdout.trim()) }
  }
  const home = path.join(dir, 'pg')
  const data = path.join(home, 'data')
  mkdirSync(home, { mode: 0o700 })
  const password = randomBytes(18).toString('hex')
  const pwfile = path.join(home, 'pw')
  writeFileSync(pwfile, `${password}\n`, { mode: 0o600 })
  // The bench dir is 0700 root: the postgres user needs to reach its own directory in it.
  if (ids) {
    chownSync(home, ids.uid, ids.gid)
    chownSync(pwfile, ids.uid, ids.gid)
    chownSync(dir, ids.uid, ids.gid)
  }
  const pgRun = (bin: string, args: string[]) => run(path.join(PG_BIN, bin), args, { ...(ids ?? {}), cwd: home, env: { PATH: process.env.PATH, LC_ALL: 'C', HOME: home } })
  await pgRun('initdb', ['-D', data, '-U', 'postgres', '--pwfile', pwfile, '--auth-local', 'trust', '--auth-host', 'scram-sha-256', '--no-instructions', '-E', 'UTF8', '--locale=C'])
  const port = await freePort()
  appendFileSync(path.join(data, 'postgresql.conf'), [
    '', `listen_addresses = '127.0.0.1'`, `port = ${port}`, `unix_socket_directories = '${home}'`,
    'fsync = on', 'synchronous_commit = on', 'full_page_writes = on', 'shared_buffers = 128MB', 'max_connections = 100', '',
  ].join('\n'))
  await pgRun('pg_ctl', ['start', '-D', data, '-w', '-t', '60', '-l', path.join(home, 'log')])
  const url = (db: string) => `postgres://postgres:${password}@127.0.0.1:${port}/${db}`
  return {
    url,
    async createDatabase(db) {
      const c = new pg.Client({ connectionString: url('postgres') })
      await c.connect()
      try {
        await c.query(`CREATE DATABASE ${db}`)
      } finally {
        await c.end()
      }
      return url(db)
    },
    pid: () => Number(readFileSync(path.join(data, 'postmaster.pid'), 'utf8').split('\n')[0]),
    async stop() {
      await pgRun('pg_ctl', ['stop', '-D', data, '-m', 'fast', '-w', '-t', '60'])
    },
  }
}
