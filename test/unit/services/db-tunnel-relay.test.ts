import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { PassThrough, Writable } from 'node:stream'
import { DirectReads, relay } from '../../../src/services/db-tunnel/relay.ts'
import { tlsTunnel } from '../../fixtures/db-tunnel.ts'
import { rawConnect } from '../../fixtures/psql.ts'

/** A destination that records every write call (single chunks and writev batches) and can hold its callbacks. */
function recorder(opts: { highWaterMark?: number; hold?: boolean } = {}) {
  const calls: number[][] = []
  const held: (() => void)[] = []
  const out: Buffer[] = []
  const done = (cb: (err?: Error | null) => void) => (opts.hold ? held.push(() => cb()) : cb())
  const dst = new Writable({
    highWaterMark: opts.highWaterMark ?? 64 * 1024,
    write(chunk: Buffer, _enc, cb) {
      calls.push([chunk.length])
      out.push(Buffer.from(chunk))
      done(cb)
    },
    writev(chunks, cb) {
      calls.push(chunks.map((c) => (c.chunk as Buffer).length))
      for (const c of chunks) out.push(Buffer.from(c.chunk as Buffer))
      done(cb)
    },
  })
  return { dst, calls, held, out: () => Buffer.concat(out) }
}

const tick = () => new Promise((r) => setImmediate(r))

describe('db-tunnel relay', () => {
  test('copies in order, ends the destination, and releases the memory of chunks that own their buffer once written', async () => {
    const src = new PassThrough()
    const { dst, out } = recorder()
    relay(src, dst, { coalesceRecords: false })
    const owned = Buffer.from(new ArrayBuffer(5000)).fill(1)
    const small = Buffer.from(new ArrayBuffer(100)).fill(3)
    const big = Buffer.alloc(15000, 2)
    const slice = big.subarray(5000, 10000)
    const pooled = Buffer.from('pooled')
    for (const c of [owned, small, slice, pooled]) src.write(c)
    src.end()
    await new Promise((r) => dst.once('finish', r))
    assert.deepEqual(out(), Buffer.concat([Buffer.alloc(5000, 1), Buffer.alloc(100, 3), Buffer.alloc(5000, 2), Buffer.from('pooled')]))
    assert.equal(owned.buffer.byteLength, 0, 'a chunk owning its whole buffer is released after its write')
    assert.equal(small.buffer.byteLength, 100, 'a small chunk is written without a callback and left to the GC')
    assert.equal(big.buffer.byteLength, 15000, 'a view into a larger buffer is left alone')
    assert.deepEqual(big.subarray(0, 5000), Buffer.alloc(5000, 2), 'the other views of that buffer are intact')
    assert.equal(pooled.toString(), 'pooled', 'a chunk from the shared pool is left alone')
  })

  test('a chunk whose write failed is not released', async () => {
    const src = new PassThrough()
    const dst = new Writable({ write: (_c, _e, cb) => cb(new Error('boom')) })
    dst.on('error', () => undefined)
    relay(src, dst, { coalesceRecords: false })
    const owned = Buffer.from(new ArrayBuffer(5000))
    src.write(owned)
    await tick()
    await tick()
    assert.equal(owned.buffer.byteLength, 5000)
  })

  test('full TLS records arriving together go out as one write; smaller chunks at once', async () => {
    const src = new PassThrough({ highWaterMark: 1024 * 1024 })
    const { dst, calls } = recorder({ highWaterMark: 256 * 1024 })
    relay(src, dst, { coalesceRecords: true })
    src.write(Buffer.alloc(100))
    await tick()
    assert.deepEqual(calls, [[100]], 'a small chunk is written without waiting')
    for (let i = 0; i < 4; i++) src.write(Buffer.alloc(16 * 1024))
    src.write(Buffer.alloc(10))
    assert.equal(calls.length, 1, 'the records wait for the end of this round of the event loop')
    await tick()
    assert.deepEqual(calls, [[100], [16384, 16384, 16384, 16384, 10]])
  })

  test('a batch is flushed early once a high-water mark is waiting', async () => {
    const src = new PassThrough({ highWaterMark: 1024 * 1024 })
    const { dst, calls } = recorder({ highWaterMark: 32 * 1024 })
    relay(src, dst, { coalesceRecords: true })
    for (let i = 0; i < 5; i++) src.write(Buffer.alloc(16 * 1024))
    await tick()
    assert.deepEqual(calls, [[16384, 16384], [16384, 16384], [16384]])
  })

  test('backpressure: the source pauses while the destination is full, and resumes on drain', async () => {
    const src = new PassThrough({ highWaterMark: 1024 * 1024 })
    const { dst, held, out } = recorder({ highWaterMark: 1024, hold: true })
    relay(src, dst, { coalesceRecords: false })
    src.write(Buffer.alloc(2048, 7))
    src.write(Buffer.alloc(10, 8))
    await tick()
    assert.equal(src.isPaused(), true)
    assert.equal(out().length, 2048, 'nothing more is written while the destination is full')
    for (const cb of held.splice(0)) cb()
    await tick()
    await tick()
    assert.equal(src.isPaused(), false)
    for (const cb of held.splice(0)) cb()
    assert.equal(out().length, 2058)
  })

  test('stop() ends the copy; a destination that closes pauses the source', async () => {
    const src = new PassThrough()
    const a = recorder()
    const stop = relay(src, a.dst, { coalesceRecords: false })
    src.write('one')
    await tick()
    stop()
    src.write('two')
    await tick()
    assert.equal(a.out().toString(), 'one')
    assert.equal(a.dst.writableEnded, false)

    const src2 = new PassThrough()
    const b = recorder()
    relay(src2, b.dst, { coalesceRecords: false })
    b.dst.destroy()
    await tick()
    src2.write('late')
    await tick()
    assert.equal(src2.isPaused(), true)
    assert.equal(b.out().length, 0)
  })

  test('direct reads: the read buffer is reused only while the destination keeps nothing; a kept chunk is never overwritten', async () => {
    const src = new PassThrough()
    const { dst, held, out } = recorder({ highWaterMark: 1024 * 1024, hold: true })
    const reads = new DirectReads()
    relay(src, dst, { coalesceRecords: false, reads })
    // What Node does per read: fill the current buffer, call back, then ask for the next buffer.
    const read = (bytes: Buffer) => {
      const buf = reads.onread.buffer()
      bytes.copy(buf)
      return { buf, more: reads.onread.callback(bytes.length, buf) }
    }
    const first = read(Buffer.from('one'))
    assert.equal(first.more, true)
    assert.equal(held.length, 1, 'the destination holds the first write')
    const second = read(Buffer.from('two'))
    assert.notEqual(second.buf, first.buf, 'the first chunk is still queued, so the next read got a new buffer')
    assert.equal(first.buf.subarray(0, 3).toString(), 'one', 'the kept chunk is intact')
    for (const cb of held.splice(0)) cb()
    await tick()
    for (const cb of held.splice(0)) cb()
    await tick()
    // With nothing queued (a write the destination took at once), the buffer is kept for the next read.
    const free = recorder()
    const reads2 = new DirectReads()
    relay(new PassThrough(), free.dst, { coalesceRecords: false, reads: reads2 })
    const a = reads2.onread.buffer()
    Buffer.from('abc').copy(a)
    reads2.onread.callback(3, a)
    assert.equal(reads2.onread.buffer(), a, 'a chunk written at once leaves the buffer free')
    assert.equal(free.out().toString(), 'abc')
    assert.equal(out().toString(), 'onetwo')
  })

  test('direct reads: what arrives before the relay is attached is held, in order, and reading pauses until then', async () => {
    const src = new PassThrough()
    const reads = new DirectReads()
    const buf = reads.onread.buffer()
    Buffer.from('early').copy(buf)
    assert.equal(reads.onread.callback(5, buf), false, 'reading pauses until a relay takes the chunks')
    Buffer.from('XXXXX').copy(buf)
    const { dst, out } = recorder()
    relay(src, dst, { coalesceRecords: false, reads })
    const next = reads.onread.buffer()
    Buffer.from('late').copy(next)
    reads.onread.callback(4, next)
    assert.equal(out().toString(), 'earlylate', 'the held chunk was a copy, written before the next one')
  })

  test('through the tunnel: a server that speaks first is relayed (protocol tls)', async () => {
    const t = await tlsTunnel('greeter', (s) => {
      s.on('error', () => undefined)
      s.write('HELLO from the server\r\n')
      s.pipe(s)
    })
    try {
      const s = await rawConnect({ host: '127.0.0.1', port: t.port })
      const got = await new Promise<string>((resolve, reject) => {
        s.once('data', (d: Buffer) => resolve(d.toString()))
        s.once('error', reject)
      })
      assert.equal(got, 'HELLO from the server\r\n')
      s.destroy()
    } finally {
      await t.stop()
    }
  })

  test('through the tunnel: a client that stops reading while the server sends 64 MiB holds the server back (memid buffers a bounded amount)', { timeout: 30_000 }, async () => {
    const total = 64 * 1024 * 1024
    const chunk = 64 * 1024
    const payload = randomBytes(total)
    // Bytes the server's socket took from it so far: it writes with backpressure, so this
    // stops growing once every buffer between it and the client is full.
    let sent = 0
    const t = await tlsTunnel('firehose', (s) => {
      s.on('error', () => undefined)
      void (async () => {
        for (let off = 0; off < total && !s.destroyed; off += chunk) {
          sent = off + chunk
          if (!s.write(payload.subarray(off, off + chunk))) await new Promise((r) => s.once('drain', r))
        }
        s.end()
      })()
    })
    try {
      const s = await rawConnect({ host: '127.0.0.1', port: t.port })
      s.pause()
      // Wait until the server makes no progress for 300 ms (everything on the way is full).
      let last = -1
      for (let i = 0; i < 100 && sent !== last; i++) {
        last = sent
        await new Promise((r) => setTimeout(r, 300))
      }
      assert.equal(sent, last, 'the server stalled while the client did not read')
      // Kernel socket buffers on the way (four of them, a few MiB each on loopback) plus
      // memid's own buffering (about 1 MiB per direction) — far from all of it.
      assert.ok(sent < 32 * 1024 * 1024, `the server got ${sent} of ${total} bytes out while the client read nothing`)
      const received = createHash('sha256')
      let n = 0
      await new Promise<void>((resolve, reject) => {
        s.on('data', (d: Buffer) => {
          received.update(d)
          n += d.length
        })
        s.once('end', resolve)
        s.once('error', reject)
        s.resume()
      })
      assert.equal(n, total)
      assert.equal(received.digest('hex'), createHash('sha256').update(payload).digest('hex'))
      s.destroy()
    } finally {
      await t.stop()
    }
  })

  test('through the tunnel: 24 MiB each way, byte for byte, with a client that reads slowly at first', { timeout: 20_000 }, async () => {
    // An echo server: what the client sends comes back through the tunnel's other direction.
    const t = await tlsTunnel('echo', (s) => {
      s.on('error', () => undefined)
      s.pipe(s)
    })
    try {
      const payload = randomBytes(24 * 1024 * 1024)
      const s = await rawConnect({ host: '127.0.0.1', port: t.port })
      s.pause()
      const received = createHash('sha256')
      let n = 0
      const done = new Promise<void>((resolve, reject) => {
        s.on('data', (d: Buffer) => {
          received.update(d)
          n += d.length
        })
        s.once('end', resolve)
        s.once('error', reject)
      })
      // Everything queued at once; the client does not read for a while, so every buffer
      // on the way fills up and both directions run into backpressure.
      for (let off = 0; off < payload.length; off += 1024 * 1024) s.write(payload.subarray(off, off + 1024 * 1024))
      s.end()
      await new Promise((r) => setTimeout(r, 300))
      s.resume()
      await done
      assert.equal(n, payload.length)
      assert.equal(received.digest('hex'), createHash('sha256').update(payload).digest('hex'))
    } finally {
      await t.stop()
    }
  })
})
