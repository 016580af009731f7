import { readFileSync } from 'node:fs'
import path from 'node:path'
import type { Command } from 'commander'
import { MemidError } from '../core/errors.ts'
import { formatDuration } from '../core/duration.ts'
import { resolveDataDir } from '../config/paths.ts'
import { loadYaml } from '../core/yaml.ts'
import type { AuditEvent, Bot, BotInstance, Lock, Page, Resource, Role } from '../storage/store.ts'
import type { AddedResource, CreatedPlatformToken, CreatedToken, PublicToken } from '../auth/admin.ts'
import { emit, list, parseFormat, table, type Format } from './output.ts'
import { socketPipe, socketRequest } from './socket-client.ts'

interface Common {
  dataDir?: string
  format?: string
}

/** The admin socket of the data directory, and what to say when it does not answer. */
function adminSocket(opts: Common): [socketPath: string, what: string, hint: string] {
  const dir = resolveDataDir(opts.dataDir)
  return [path.join(dir, 'admin.sock'), 'the auth service admin socket', `is "memid auth start --data-dir ${dir}" running?`]
}

function adminCall<T>(opts: Common, method: string, p: string, body?: unknown): Promise<T> {
  const [socketPath, what, hint] = adminSocket(opts)
  return socketRequest<T>(socketPath, method, p, body, what, hint)
}

/**
 * `--format json` of a listing when stdout is not a terminal (a script, a pipe, a file):
 * the page goes out as the admin API streams it, compact, never parsed or held whole. A
 * page of 10,000 instances is ~20 MB; parsing and indenting it cost the CLI ~0.3 s of CPU
 * and ~70 MB per page, on the machine where the auth service answers renewals. On a
 * terminal the page is indented like every other `--format json` output.
 */
function streamsPage(f: Format): boolean {
  return f === 'json' && process.stdout.isTTY !== true
}

/** One listing page straight from the admin API to stdout (streamsPage). */
function pipePage(opts: Common, method: string, p: string, body?: unknown): Promise<void> {
  const [socketPath, what, hint] = adminSocket(opts)
  return socketPipe(socketPath, method, p, body, what, hint, process.stdout)
}

const csv = (v: string | undefined): string[] => (v === undefined ? [] : v.split(',').map((s) => s.trim()).filter(Boolean))

/** Adds `--data-dir` and `--format` to an admin command. */
function common(cmd: Command, formats: Format[] = ['text', 'json', 'yaml']): Command {
  return cmd.option('--data-dir <dir>', 'the auth service data directory').option('--format <format>', formats.join(' | '), 'text')
}

function readTextFile(flag: string, file: string | undefined): string | undefined {
  if (file === undefined) return undefined
  try {
    return readFileSync(file, 'utf8')
  } catch (err) {
    throw new MemidError('ERR_NOT_FOUND', `${flag}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`)
  }
}


/** `GROUP ls`: GET the collection, print JSON/YAML or a table. */
function lsCommand<T>(group: Command, what: string, apiPath: string, headers: string[], row: (item: T) => (string | number | undefined)[]): void {
  common(group.command('ls').description(`list ${what}`)).action(async (o: Common) => {
    const f = parseFormat(o.format)
    const rows = await adminCall<T[]>(o, 'GET', apiPath)
    emit(f, rows, () => table(headers, rows.map(row)))
  })
}

interface Paging {
  limit?: string
  after?: string
}

/** Text shows the newest 100 by default; JSON and YAML, meant for scripts, 1000. */
const TEXT_PAGE = 100
const DATA_PAGE = 1000

/** Adds `--limit` and `--after` to a listing. */
function paged(cmd: Command): Command {
  return cmd
    .option('--limit <n>', `how many, newest first (default ${TEXT_PAGE} as text, ${DATA_PAGE} as json/yaml; at most 10000)`)
    .option('--after <cursor>', 'continue after this cursor (the "next" of the page before)')
}

function pageParams(o: Paging, f: Format): { limit: number; after?: string } {
  const limit = o.limit === undefined ? (f === 'text' ? TEXT_PAGE : DATA_PAGE) : Number(o.limit)
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > 10_000) throw new MemidError('ERR_USAGE', '--limit: must be an integer from 1 to 10000')
  return o.after === undefined ? { limit } : { limit, after: o.after }
}

function pageQuery(p: { limit: number; after?: string }): URLSearchParams {
  const q = new URLSearchParams({ limit: String(p.limit) })
  if (p.after !== undefined) q.set('after', p.after)
  return q
}

/** Prints a page: JSON/YAML as `{ items, next }`, text as a table with a hint on stderr when more remain. */
function emitPage<T>(f: Format, page: Page<T>, command: string, text: (items: T[]) => string): void {
  emit(f, page, () => text(page.items))
  if (f === 'text' && page.next !== undefined) {
    process.stderr.write(`(the newest ${page.items.length} shown; more: ${command} --after ${page.next})\n`)
  }
}

/** `GROUP ls` for a table that pages: GET one page of the collection. */
function pagedLsCommand<T>(group: Command, what: string, apiPath: string, headers: string[], row: (item: T) => (string | number | undefined)[]): void {
  paged(common(group.command('ls').description(`list ${what}, newest first`))).action(async (o: Common & Paging) => {
    const f = parseFormat(o.format)
    const url = `${apiPath}?${pageQuery(pageParams(o, f))}`
    if (streamsPage(f)) return pipePage(o, 'GET', url)
    const page = await adminCall<Page<T>>(o, 'GET', url)
    emitPage(f, page, `memid ${group.name()} ls`, (items) => table(headers, items.map(row)))
  })
}

/** `GROUP rm ID`: DELETE one item. */
function rmCommand(group: Command, arg: string, description: string, apiPath: string, done: (id: string) => string): void {
  common(group.command(`rm <${arg}>`).description(description)).action(async (id: string, o: Common) => {
    await adminCall(o, 'DELETE', `${apiPath}/${encodeURIComponent(id)}`)
    emit(parseFormat(o.format), { ok: true }, () => `${done(id)}\n`)
  })
}

export function registerAdminCommands(program: Command): void {
  const roles = program.command('roles').description('roles: what bots may do')
  common(roles.command('add <name>').description('create a role'))
    .option('--logins <list>', 'SSH logins (principals)')
    .option('--kube-clusters <list>', "kube clusters, or '*'")
    .option('--kube-users <list>', 'kube users')
    .option('--kube-groups <list>', 'kube groups')
    .option('--databases <list>', "database services, or '*'")
    .option('--db-users <list>', 'database users')
    .option('--db-names <list>', "database names, or '*'")
    .action(async (name: string, o: Common & Record<string, string | undefined>) => {
      const f = parseFormat(o.format)
      const role = await adminCall<Role>(o, 'POST', '/v1/roles', {
        name, logins: csv(o.logins), kubeClusters: csv(o.kubeClusters), kubeUsers: csv(o.kubeUsers), kubeGroups: csv(o.kubeGroups),
        databases: csv(o.databases), dbUsers: csv(o.dbUsers), dbNames: csv(o.dbNames),
      })
      emit(f, role, () => `role "${role.name}" created\n`)
    })
  lsCommand<Role>(roles, 'roles', '/v1/roles', ['Name', 'Logins', 'Kube Clusters', 'Kube Users', 'Kube Groups', 'Databases', 'DB Users', 'DB Names'],
    (r) => [r.name, list(r.logins), list(r.kubeClusters), list(r.kubeUsers), list(r.kubeGroups), list(r.databases), list(r.dbUsers), list(r.dbNames)])
  rmCommand(roles, 'name', 'delete a role', '/v1/roles', (n) => `role "${n}" deleted`)

  const bots = program.command('bots').description('bots: machine identities')
  common(bots.command('add <name>').description('create a bot and print its first join token'))
    .requiredOption('--roles <list>', 'roles, comma-separated')
    .option('--max-ttl <duration>', 'longest certificate TTL (default 12h)')
    .action(async (name: string, o: Common & { roles: string; maxTtl?: string }) => {
      const f = parseFormat(o.format)
      const out = await adminCall<{ bot: Bot; token: CreatedToken }>(o, 'POST', '/v1/bots', { name, roles: csv(o.roles), ...(o.maxTtl ? { maxTtl: o.maxTtl } : {}) })
      emit(f, out, () =>
        `bot "${out.bot.name}" created with roles ${out.bot.roles.join(', ')} (max TTL ${formatDuration(out.bot.maxTtlMs)})\n` +
        `join token ${out.token.name}, single use, expires ${out.token.expiresAt}:\n${out.token.token}\n`)
    })
  pagedLsCommand<Bot>(bots, 'bots', '/v1/bots', ['Name', 'Roles', 'Max TTL', 'Created'], (b) => [b.name, list(b.roles), formatDuration(b.maxTtlMs), b.createdAt])
  rmCommand(bots, 'name', 'delete a bot and end its instances (final: a bot added later under the name is a new bot)', '/v1/bots', (n) => `bot "${n}" deleted`)

  const tokens = program.command('tokens').description('join tokens: single-use secrets, or platform join rules (github, gitlab, kubernetes, oidc)')
  common(tokens.command('add').description('create a join token; prints only the token (platform methods: only its name)'))
    .requiredOption('--bot <name>', 'the bot the token joins as')
    .option('--ttl <duration>', 'validity (default 30m; 0: never expires, platform methods only)')
    .option('--join-method <method>', 'token | github | gitlab | kubernetes | oidc', 'token')
    .option('--allow <rule>', 'platform methods: KEY=VALUE[,KEY=VALUE…] claims a JWT must carry; repeat for alternatives', (v: string, prev: string[] = []) => [...prev, v])
    .option('--name <name>', 'platform methods: the public name agents give with --join-token (default generated)')
    .option('--issuer <url>', "platform methods: the JWT's expected issuer (https://…)")
    .option('--jwks-file <file>', "platform methods: the issuer's public JWKS (no discovery), e.g. from kubectl get --raw /openid/v1/jwks")
    .option('--audience <aud>', "platform methods: the JWT's expected audience (default: the cluster name)")
    .action(async (o: Common & { bot: string; ttl?: string; joinMethod: string; allow?: string[]; name?: string; issuer?: string; jwksFile?: string; audience?: string }) => {
      const f = parseFormat(o.format)
      const jwks = readTextFile('--jwks-file', o.jwksFile)
      const t = await adminCall<CreatedToken | CreatedPlatformToken>(o, 'POST', '/v1/tokens', {
        bot: o.bot, joinMethod: o.joinMethod, ...(o.ttl ? { ttl: o.ttl } : {}), ...(o.allow ? { allow: o.allow } : {}), ...(o.name ? { name: o.name } : {}),
        ...(o.issuer ? { issuer: o.issuer } : {}), ...(jwks !== undefined ? { jwks } : {}), ...(o.audience ? { audience: o.audience } : {}),
      })
      emit(f, t, () => `${'token' in t ? t.token : t.name}\n`)
    })
  pagedLsCommand<PublicToken>(tokens, 'join tokens (names and rules, never secrets)', '/v1/tokens', ['Name', 'Bot', 'Join Method', 'Rules', 'Expires', 'Used By / Joins'],
    (t) => [t.name, t.bot, t.joinMethod, t.platform?.rules.map((r) => Object.entries(r).map(([k, v]) => `${k}=${v}`).join(',')).join(' | '),
      t.expiresAt ?? 'never', t.platform ? `${t.joinCount ?? 0} joins` : t.usedByInstance])
  rmCommand(tokens, 'name', 'delete a join token', '/v1/tokens', (n) => `token "${n}" deleted`)

  for (const [group, kind, flag, example, caKind, nameFlag] of [
    ['kube', 'kube cluster', '--server', 'https://HOST:PORT', 'kube-client', '--cluster'],
    ['dbs', 'database', '--uri', 'postgres://HOST:PORT', 'db-client', '--database'],
  ] as const) {
    const g = program.command(group).description(`${kind}s the bots may reach`)
    common(g.command('add <name>').description(`register a ${kind}; it gets a client CA of its own for its server to trust`))
      .requiredOption(`${flag} <uri>`, example)
      .option('--ca-file <pem>', `the CA that signed the ${kind}'s server certificate`)
      .action(async (name: string, o: Common & { server?: string; uri?: string; caFile?: string }) => {
        const f = parseFormat(o.format)
        const caPem = readTextFile('--ca-file', o.caFile)
        const res = await adminCall<AddedResource>(o, 'POST', `/v1/${group}`, { name, uri: o.server ?? o.uri, ...(caPem ? { caPem } : {}) })
        emit(f, res, () => `${kind} "${res.name}" registered at ${res.uri}\n` +
          `${res.keptCa ? 'it keeps the client CA kept by rm --keep-ca' : 'its server must trust its new client CA'}: memid auth export --kind ${caKind} ${nameFlag} ${res.name}\n`)
      })
    lsCommand<Resource>(g, `${kind}s`, `/v1/${group}`, ['Name', group === 'kube' ? 'Server' : 'URI', 'CA', 'Created'], (r) => [r.name, r.uri, r.caPem ? 'custom' : 'system roots', r.createdAt])
    common(g.command('rm <name>').description(`remove a ${kind} and its client CA`))
      .option('--keep-ca', `keep its client CA for a later "${group} add" of the same name (its server need not change)`)
      .action(async (name: string, o: Common & { keepCa?: boolean }) => {
        await adminCall(o, 'DELETE', `/v1/${group}/${encodeURIComponent(name)}${o.keepCa ? '?keepCa=true' : ''}`)
        emit(parseFormat(o.format), { ok: true }, () => `${kind} "${name}" removed${o.keepCa ? '; its client CA is kept' : ''}\n`)
      })
  }

  paged(common(program.command('get <resource>').description('show bot_instance, bot_instance/BOT or bot_instance/BOT/ID')))
    .action(async (resource: string, o: Common & Paging) => {
      const f = parseFormat(o.format)
      const parts = resource.split('/')
      if (parts[0] !== 'bot_instance' || parts.length > 3 || parts.some((p) => p === '')) {
        throw new MemidError('ERR_USAGE', `unknown resource "${resource}": use bot_instance, bot_instance/BOT or bot_instance/BOT/ID`)
      }
      if (parts.length === 3) {
        const i = await adminCall<BotInstance>(o, 'GET', `/v1/instances/${encodeURIComponent(parts[1] as string)}/${encodeURIComponent(parts[2] as string)}`)
        emit(f, i, () => instanceText(i))
        return
      }
      const q = pageQuery(pageParams(o, f))
      if (parts.length === 2) q.set('bot', parts[1] as string)
      if (streamsPage(f)) return pipePage(o, 'GET', `/v1/instances?${q}`)
      const page = await adminCall<Page<BotInstance>>(o, 'GET', `/v1/instances?${q}`)
      emitPage(f, page, `memid get ${resource}`, (rows) => table(['Bot', 'Instance ID', 'Generation', 'Joined', 'Last Seen', 'Hostname', 'Version'], rows.map((i) => {
        const hb = i.heartbeats.at(-1)
        const last = [hb?.time, i.latestAuthentications.at(-1)?.time].filter(Boolean).sort().at(-1)
        return [i.bot, i.id, i.endedAt !== undefined ? `${i.generation} (ended)` : i.pendingGeneration !== null ? `${i.generation} (→${i.pendingGeneration})` : i.generation, i.createdAt, last, hb?.hostname, hb?.version]
      })))
    })

  const locks = program.command('locks').description('locks: stop a bot or instance at its next request')
  common(locks.command('add').description('lock a bot or a bot instance'))
    .option('--bot <name>', 'lock every instance of this bot')
    .option('--instance <id>', 'lock one bot instance')
    .option('--reason <text>', 'why (recorded and shown to the agent)')
    .action(async (o: Common & { bot?: string; instance?: string; reason?: string }) => {
      const f = parseFormat(o.format)
      if ((o.bot === undefined) === (o.instance === undefined)) throw new MemidError('ERR_USAGE', 'give exactly one of --bot NAME or --instance ID')
      const lock = await adminCall<Lock>(o, 'POST', '/v1/locks', { ...(o.bot ? { bot: o.bot } : {}), ...(o.instance ? { instance: o.instance } : {}), ...(o.reason ? { reason: o.reason } : {}) })
      emit(f, lock, () => `lock ${lock.id} created\n`)
    })
  lsCommand<Lock>(locks, 'locks', '/v1/locks', ['ID', 'Target', 'Reason', 'Created'], (l) => [l.id, l.bot ? `bot/${l.bot}` : `instance/${l.instance}`, l.reason, l.createdAt])
  rmCommand(locks, 'id', 'remove a lock', '/v1/locks', (id) => `lock ${id} removed`)

  paged(common(program.command('audit').description('show audit events, newest first'), ['text', 'json']))
    .option('--since <duration>', 'only events newer than this, e.g. 1h')
    .option('--type <type>', 'only this event type, e.g. join.failed')
    .option('--bot <name>', 'only events about this bot')
    .action(async (o: Common & Paging & { since?: string; type?: string; bot?: string }) => {
      const f = parseFormat(o.format, ['text', 'json'])
      const filters = { ...(o.since ? { since: o.since } : {}), ...(o.type ? { type: o.type } : {}), ...(o.bot ? { bot: o.bot } : {}) }
      if (streamsPage(f)) return pipePage(o, 'POST', '/v1/audit', { ...filters, ...pageParams(o, f) })
      const page = await adminCall<Page<AuditEvent>>(o, 'POST', '/v1/audit', { ...filters, ...pageParams(o, f) })
      const again = ['memid audit', ...Object.entries(filters).map(([k, v]) => `--${k} ${v}`)].join(' ')
      emitPage(f, page, again, (rows) => table(['Time', 'Type', 'Result', 'Bot', 'Instance', 'Details'], rows.map((e) => [
        e.time, e.type, e.success ? 'ok' : e.code ?? 'failed', e.bot, e.instance?.slice(0, 8),
        [e.message, ...Object.entries(e.fields).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)].filter(Boolean).join(' '),
      ])))
    })
}

function instanceText(i: BotInstance): string {
  const doc = {
    bot: i.bot, instance: i.id, joinMethod: i.joinMethod, token: i.tokenName, created: i.createdAt,
    ...(i.claims ? { claims: i.claims } : {}),
    generation: i.generation, pendingGeneration: i.pendingGeneration,
    ...(i.endedAt !== undefined ? { ended: i.endedAt } : {}),
    initialAuthentication: i.initialAuthentication,
    latestAuthentications: i.latestAuthentications,
    heartbeats: i.heartbeats,
  }
  return loadYaml().stringify(doc)
}
