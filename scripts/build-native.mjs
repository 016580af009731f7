/**
 * Builds the native addons into native/build/ (run by `npm install`, and by
 * `npm run build:native`). Both are optional, so a failed build warns in one line and
 * exits 0 rather than failing the install:
 * - sock-diag.node: without it the local-exposure check reads /proc/net/tcp instead, which
 *   is correct but costs milliseconds of CPU per batch of new connections; the agent says
 *   at start which lookup it uses.
 * - malloc-trim.node: without it the agent's C heap keeps what renewals freed (see
 *   native/malloc-trim.c); nothing else changes.
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, renameSync, rmSync } from 'node:fs'
import path from 'node:path'

const root = path.resolve(import.meta.dirname, '..')
const outDir = path.join(root, 'native', 'build')

const ADDONS = [
  { name: 'sock-diag', without: 'the local-exposure check will read /proc/net/tcp instead (slower)' },
  { name: 'malloc-trim', without: 'the agent will not hand memory freed by renewals back to the kernel' },
]

if (process.platform !== 'linux') {
  // The peer-owner check is Linux-only; elsewhere the agent refuses unknown peers anyway.
  process.exit(0)
}
const cc = process.env.CC ?? 'cc'
mkdirSync(outDir, { recursive: true })
for (const { name, without } of ADDONS) {
  const out = path.join(outDir, `${name}.node`)
  const tmp = `${out}.${process.pid}.tmp`
  const r = spawnSync(cc, ['-O2', '-Wall', '-Wextra', '-shared', '-fPIC', '-fvisibility=hidden', '-o', tmp, path.join(root, 'native', `${name}.c`)], { encoding: 'utf8' })
  const why = r.error !== undefined ? `${cc}: ${r.error.code ?? r.error.message}` : r.status !== 0 ? `${cc} exited ${r.status}: ${(r.stderr.trim().split('\n')[0] ?? '').slice(0, 200)}` : undefined
  if (why === undefined) {
    renameSync(tmp, out)
    continue
  }
  rmSync(tmp, { force: true })
  console.warn(`memid: native/${name}.node not built (${why}); ${without}. To build it: install a C compiler (Debian: apt-get install gcc libc6-dev) and run npm run build:native`)
}
