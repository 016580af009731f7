/**
 * The mutation run of the security core (issue 15): StrykerJS with the TAP runner over
 * `node --test-reporter=tap`, one Stryker run per group so that each group's mutants are
 * tried only against the test files that exercise that code (a static mutant, such as an
 * entry of the redaction list, would otherwise run every listed test file).
 *
 *   npm run mutate                   every group, then the total score
 *   npm run mutate -- auth log       only the named groups
 *   MUTATE_CONCURRENCY=2 npm run mutate
 *   npm run mutate -- auth --only src/auth/tokens.ts,src/auth/rbac.ts   part of a group
 *   MUTATE_FRESH=1 npm run mutate -- log   ignore the group's previous (incremental) results
 *
 * Not part of CI: it takes long (see README, "Mutation testing"). Reports land in
 * reports/mutation/<group>.html and .json.
 */
import { readFileSync } from 'node:fs'
import { Stryker } from '@stryker-mutator/core'

interface Group {
  name: string
  /** Files (or `file:from-to` ranges) whose code is mutated. */
  mutate: string[]
  /** The test files that exercise it; only in-process tests can see a mutant. */
  tests: string[]
}

/**
 * The line range of one function or method, found by the text that opens it, so the
 * configuration follows the code when lines move. The range ends at the first line that
 * closes the block at the opening line's indentation (`closing`: `}` or `]` unless given).
 */
function fn(file: string, opening: string, closing = ['}', ']']): string {
  const lines = readFileSync(file, 'utf8').split('\n')
  const start = lines.findIndex((l) => l.includes(opening))
  if (start < 0) throw new Error(`${file}: no line contains ${JSON.stringify(opening)} (update scripts/mutate.ts)`)
  const indent = /^\s*/.exec(lines[start] as string)?.[0] ?? ''
  const end = lines.findIndex((l, i) => i > start && closing.some((c) => l === `${indent}${c}`))
  if (end < 0) throw new Error(`${file}: cannot find the end of ${JSON.stringify(opening)}`)
  return `${file}:${start + 1}-${end + 1}`
}

/** The one line that contains `text` (a constant such as a regular expression). */
function line(file: string, text: string): string {
  const at = readFileSync(file, 'utf8').split('\n').findIndex((l) => l.includes(text))
  if (at < 0) throw new Error(`${file}: no line contains ${JSON.stringify(text)} (update scripts/mutate.ts)`)
  return `${file}:${at + 1}-${at + 1}`
}

const GROUPS: Group[] = [
  {
    // The decisions, each a small module with its own fast unit tests.
    name: 'auth',
    mutate: ['tokens', 'rbac', 'generation', 'issue-kube', 'issue-ssh', 'issue-db', 'bot-identity'].map((f) => `src/auth/${f}.ts`),
    tests: [
      'test/unit/auth/tokens.test.ts', 'test/unit/auth/tokens-compare.test.ts', 'test/unit/auth/rbac.test.ts', 'test/unit/auth/issue-kube.test.ts',
      'test/unit/auth/issue-kube-roles.test.ts', 'test/unit/auth/issue-ssh.test.ts', 'test/unit/auth/issue-db.test.ts', 'test/unit/auth/bot-identity.test.ts',
      'test/unit/auth/generation-rules.test.ts', 'test/unit/auth/generation.test.ts',
    ],
  },
  {
    // The service that applies them: authentication, locks, TTL clamps, audit, the HTTP edge.
    name: 'auth-service',
    mutate: ['src/auth/auth-service.ts', 'src/auth/http-api.ts'],
    tests: ['test/unit/auth/auth-service.test.ts', 'test/unit/auth/generation.test.ts', 'test/integration/auth-security.test.ts'],
  },
  {
    name: 'storage',
    mutate: [...['consumeToken(', 'updateInstance(', 'locksFor('].map((m) => `async ${m}`), '#tx<T>(', '#writeInstance(', '#locksFor('].map((m) => fn('src/storage/sqlite.ts', `  ${m}`)),
    tests: ['test/unit/storage/sqlite.test.ts', 'test/integration/auth-security.test.ts'],
  },
  {
    // The wire encodings every certificate and agent message goes through.
    name: 'pki-wire',
    mutate: ['src/pki/der.ts', 'src/pki/ssh-wire.ts'],
    tests: ['test/unit/pki/der.test.ts', 'test/unit/pki/ssh-wire.test.ts', 'test/unit/pki/x509-template.test.ts', 'test/unit/pki/openssh.test.ts'],
  },
  {
    name: 'pki',
    mutate: ['src/pki/openssh.ts', 'src/pki/x509.ts', 'src/pki/pem.ts', 'src/pki/tls-context.ts'],
    tests: ['test/unit/pki/openssh.test.ts', 'test/unit/pki/x509.test.ts', 'test/unit/pki/x509-template.test.ts', 'test/unit/pki/pem.test.ts', 'test/unit/pki/openssh-strict.test.ts', 'test/unit/pki/x509-ca.test.ts', 'test/unit/pki/x509-v1-ca.test.ts', 'test/unit/pki/x509-ca-renewal.test.ts', 'test/unit/pki/openssh-inputs.test.ts', 'test/unit/pki/tls-context.test.ts', 'test/unit/auth/issue-ssh.test.ts', 'test/unit/auth/issue-kube.test.ts'],
  },
  {
    name: 'log',
    // The redaction, not the text renderer: the list, the two scrub layers, their patterns.
    mutate: [
      fn('src/core/log.ts', 'export const REDACTED_FIELDS = ['), fn('src/core/log.ts', 'function scrub('), fn('src/core/log.ts', 'function scrubLine('),
      ...['const REDACT_PATHS', 'const PEM_BLOCK', 'const OPENSSH_CERT', 'const JWT', 'const PEM_IN_JSON', 'const JOIN_TOKEN', 'const BUFFER_JSON', 'redact: {', 'formatters: {', 'hooks: {'].map((t) => line('src/core/log.ts', t)),
    ],
    tests: ['test/unit/core/log*.test.ts'],
  },
  {
    name: 'listener',
    mutate: ['src/core/listener.ts'],
    tests: ['test/unit/core/listener.test.ts', 'test/unit/core/local-access.test.ts'],
  },
  {
    name: 'ssh-agent',
    // The read-only refusals, sign checks and session binding, the framing, and the list of
    // refused requests. The rest of protocol.ts is constants that build frames at load time:
    // every test would run for each of them. The real-ssh integration test adds little here
    // and triples each mutant's time.
    mutate: ['src/services/ssh-agent/connection.ts', fn('src/services/ssh-agent/protocol.ts', 'export const MUTATING_REQUESTS', ['])']), fn('src/services/ssh-agent/protocol.ts', 'export class FrameReader')],
    tests: ['test/unit/services/ssh-agent.test.ts', 'test/unit/services/ssh-agent-connection.test.ts'],
  },
  {
    // Header stripping, the Host allow-list and Status answers: pure functions with unit tests.
    name: 'kube-headers',
    mutate: ['src/services/kube-proxy/headers.ts', 'src/services/kube-proxy/status.ts', fn('src/services/kube-proxy/config.ts', 'export class HostAllowList {'), fn('src/services/kube-proxy/config.ts', 'function splitHost(')],
    tests: ['test/unit/services/kube-proxy.test.ts'],
  },
  {
    // Where the service applies them: the Host check per request, failing closed without a certificate.
    name: 'kube-proxy',
    mutate: [fn('src/services/kube-proxy/index.ts', '  #hostAllowed('), fn('src/services/kube-proxy/index.ts', '  #current(')],
    tests: ['test/unit/services/kube-proxy-service.test.ts'],
  },
  {
    name: 'db-tunnel',
    mutate: ['src/services/db-tunnel/postgres.ts', fn('src/services/db-tunnel/tunnel.ts', '  #checkStartup('), fn('src/services/db-tunnel/tunnel.ts', '  #credential(')],
    tests: ['test/unit/services/db-tunnel-*.test.ts'],
  },
]

const argv = process.argv.slice(2)
const onlyAt = argv.indexOf('--only')
const only = onlyAt >= 0 ? (argv.splice(onlyAt, 2)[1] ?? '').split(',').filter((s) => s !== '') : undefined
const wanted = argv
const unknown = wanted.filter((w) => !GROUPS.some((g) => g.name === w))
if (unknown.length > 0) {
  console.error(`unknown group(s): ${unknown.join(', ')}; groups: ${GROUPS.map((g) => g.name).join(', ')}`)
  process.exit(2)
}

const DETECTED = new Set(['Killed', 'Timeout'])
const UNDETECTED = new Set(['Survived', 'NoCoverage'])
const rows: { name: string; killed: number; total: number; seconds: number }[] = []
const started = Date.now()

for (const g of GROUPS.filter((x) => wanted.length === 0 || wanted.includes(x.name))) {
  const t0 = Date.now()
  const results = await new Stryker({
    testRunner: 'tap',
    plugins: ['@stryker-mutator/tap-runner'],
    coverageAnalysis: 'perTest',
    tap: { testFiles: g.tests, nodeArgs: ['--test-reporter=tap', '-r', '{{hookFile}}', '{{testFile}}'], forceBail: true },
    mutate: only ?? g.mutate,
    concurrency: Number(process.env.MUTATE_CONCURRENCY ?? 1),
    // Added to the test files' own time: a mutant that hangs (a loop that never ends) is a kill, and each costs this long.
    timeoutMS: 10_000,
    reporters: ['clear-text', 'html', 'json', 'progress'],
    clearTextReporter: { allowColor: false, logTests: false, reportScoreTable: true },
    htmlReporter: { fileName: `reports/mutation/${g.name}.html` },
    jsonReporter: { fileName: `reports/mutation/${g.name}.json` },
    // Re-runs try only mutants whose code or covering tests changed since the group's last run.
    // MUTATE_FRESH runs every mutant but still writes the incremental file: without it the
    // next incremental run would merge with the results from before the fresh one.
    incremental: true,
    force: process.env.MUTATE_FRESH !== undefined,
    incrementalFile: `reports/mutation/${g.name}.incremental.json`,
    tempDirName: '.stryker-tmp',
    cleanTempDir: 'always',
    // The sandbox needs the source, the tests and their fixtures, nothing built or reported.
    ignorePatterns: ['dist', 'reports', 'bench', '.stryker-tmp'],
  }).runMutationTest()
  const killed = results.filter((r) => DETECTED.has(r.status)).length
  const total = killed + results.filter((r) => UNDETECTED.has(r.status)).length
  rows.push({ name: g.name, killed, total, seconds: Math.round((Date.now() - t0) / 1000) })
}

const pct = (k: number, t: number) => (t === 0 ? 'n/a' : `${((100 * k) / t).toFixed(1)} %`)
console.log('\nmutation score by group (killed or timed out / all but errors and ignored)')
for (const r of rows) console.log(`  ${r.name.padEnd(12)} ${pct(r.killed, r.total).padStart(8)}  (${r.killed}/${r.total}, ${r.seconds} s)`)
const k = rows.reduce((a, r) => a + r.killed, 0)
const t = rows.reduce((a, r) => a + r.total, 0)
console.log(`  ${'total'.padEnd(12)} ${pct(k, t).padStart(8)}  (${k}/${t}, ${Math.round((Date.now() - started) / 1000)} s)`)
