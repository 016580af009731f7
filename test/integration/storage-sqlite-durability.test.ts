import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { requireStrace, traceLines } from '../fixtures/zero-disk.ts'

const SQLITE_STORE = fileURLToPath(new URL('../../src/storage/sqlite.ts', import.meta.url))

/**
 * What the kernel saw, in order, for a store process that answers each grouped write (it
 * prints `acked N` once the write's promise resolved): every answer must come after an
 * fsync of the write-ahead log that followed the last write into it. A power loss can then
 * undo nothing that was answered. Groups commit without SQLite's own fsync and the WAL is
 * fsynced on the thread pool: a call split between threads counts when it returns.
 */
test('a grouped write is answered only after the write-ahead log holding it was fsynced', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'memid-durable-'))
  try {
    const db = path.join(dir, 'memid.db')
    const trace = path.join(dir, 'trace')
    const script = [
      `const { SqliteStore } = await import(${JSON.stringify(SQLITE_STORE)})`,
      'const { writeSync } = await import("node:fs")',
      `const store = SqliteStore.open(${JSON.stringify(db)})`,
      'for (let i = 0; i < 5; i++) {',
      '  const writes = [0, 1, 2].map((j) => store.appendAudit({ type: "test.durable", success: true, fields: { i, j } }))',
      '  await Promise.all(writes)',
      '  writeSync(1, `acked ${i}\\n`)',
      '}',
      'await store.close()',
    ].join('\n')
    // UV_USE_IO_URING=0: the thread pool's fsync must be a syscall strace sees (see straceArgs).
    execFileSync(requireStrace(), ['-f', '-y', '-qq', '-E', 'UV_USE_IO_URING=0', '-e', 'trace=write,pwrite64,fsync,fdatasync', '-o', trace, process.execPath, '--input-type=module', '-e', script], { stdio: 'ignore', timeout: 60_000 })
    let walDirty = false
    let acked = 0
    for (const line of traceLines(trace)) {
      if (/\b(pwrite64|write)\(\d+<[^>]*-wal>/.test(line)) walDirty = true
      else if (/\bf(data)?sync\(\d+<[^>]*-wal>.*= 0$/.test(line)) walDirty = false
      else if (/\bwrite\(1<[^>]*>, "acked \d/.test(line)) {
        assert.equal(walDirty, false, `answered while the WAL held writes not yet fsynced:\n${line}`)
        acked++
      }
    }
    assert.equal(acked, 5, 'the trace shows every answer')
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
