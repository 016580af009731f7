/**
 * Builds native/sock-diag.c into native/build/sock-diag.node (run by `npm install`, and by
 * `npm run build:native`). The addon is optional: without it the local-exposure check
 * reads /proc/net/tcp instead, which is correct but costs milliseconds of CPU per batch of
 * new connections. So a failed build warns in one line and exits 0 rather than failing the
 * install; the agent says at start which lookup it uses.
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, renameSync, rmSync } from 'node:fs'
import path from 'node:path'

const root = path.resolve(import.meta.dirname, '..')
const source = path.join(root, 'native', 'sock-diag.c')
const outDir = path.join(root, 'native', 'build')
const out = path.join(outDir, 'sock-diag.node')

/** @param {string} why */
function skip(why) {
  console.warn(`memid: native/sock-diag.node not built (${why}); the local-exposure check will read /proc/net/tcp instead (slower). To build it: install a C compiler (Debian: apt-get install gcc libc6-dev) and run npm run build:native`)
  process.exit(0)
}

if (process.platform !== 'linux') {
  // The peer-owner check is Linux-only; elsewhere the agent refuses unknown peers anyway.
  process.exit(0)
}
const cc = process.env.CC ?? 'cc'
mkdirSync(outDir, { recursive: true })
const tmp = `${out}.${process.pid}.tmp`
const r = spawnSync(cc, ['-O2', '-Wall', '-Wextra', '-shared', '-fPIC', '-fvisibility=hidden', '-o', tmp, source], { encoding: 'utf8' })
if (r.error !== undefined) skip(`${cc}: ${r.error.code ?? r.error.message}`)
if (r.status !== 0) {
  rmSync(tmp, { force: true })
  skip(`${cc} exited ${r.status}: ${(r.stderr.trim().split('\n')[0] ?? '').slice(0, 200)}`)
}
renameSync(tmp, out)
