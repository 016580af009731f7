import type { Readable, Writable } from 'node:stream'

/** The most plaintext one TLS record carries; a TLS socket delivers at most this per chunk. */
const TLS_RECORD = 16 * 1024

/**
 * The buffering of both legs' sockets (each direction, each side). A socket read is up to
 * 64 KiB, as is Node's default mark, so with the default every chunk written upstream
 * filled the TLS socket's buffer, and every chunk cost a pause, a 'drain', a resume and a
 * stop and restart of reading (two epoll_ctl calls); four chunks' worth lets reads and
 * writes overlap (~10% less CPU per GB client→server) and batches 256 KiB per writev to
 * the client. Under backpressure a connection holds at most about 1 MiB.
 */
export const RELAY_HIGH_WATER_MARK = 256 * 1024

export interface RelayOptions {
  /**
   * Batch full TLS records into one write. For the upstream → client direction: TLS hands
   * decrypted data over one record (≤ 16 KiB) at a time, every record of one socket read
   * in a row, and written one by one each record is its own write(2) that wakes the
   * client. While full records arrive (a bulk transfer: a big SELECT, a COPY TO) the
   * destination is corked until the event loop has handled this round of reads, or a
   * high-water mark's worth is waiting, and the batch goes out in one writev(2). Smaller
   * chunks, the request/response traffic of an interactive session, are written at once.
   */
  coalesceRecords: boolean
}

/** `ArrayBuffer.prototype.transfer` (ES2024; Node ≥ 21), which the project's ES2023 lib does not declare. */
type Transferable = ArrayBuffer & { transfer(newLength: number): ArrayBuffer }

/**
 * Copies `src` to `dst` with backpressure and ends `dst` when `src` ends, as `pipe()`
 * does; returns a function that stops the copy.
 *
 * Every chunk a socket delivers is a fresh buffer whose memory lives outside V8's heap.
 * V8 frees that memory only when it collects the small object that owns it, and it
 * counts the total: at hundreds of MB/s the count crosses V8's external-memory limit
 * several times a second, and each crossing forces a full mark-compact of the whole heap
 * (a perf profile of the tunnel showed ~17% of its time in GC). So once a chunk has been
 * written — handed to the kernel, or encrypted by OpenSSL into its own buffers — and only
 * if the chunk owns its whole buffer (so no other view can see it), the buffer is detached,
 * which releases its memory at once and takes it off V8's count. Write callbacks run in
 * order, so one shared callback and a queue of the chunks in flight are enough.
 */
export function relay(src: Readable, dst: Writable, opts: RelayOptions): () => void {
  const inFlight: Buffer[] = []
  const written = (err?: Error | null) => {
    const chunk = inFlight.shift()
    if (chunk !== undefined && !err && chunk.byteOffset === 0 && chunk.length === chunk.buffer.byteLength) {
      ;(chunk.buffer as Transferable).transfer(0)
    }
  }
  let corked = false
  let waiting = false
  const resume = () => {
    waiting = false
    src.resume()
  }
  const backOff = () => {
    if (waiting || dst.destroyed) return
    waiting = true
    src.pause()
    dst.once('drain', resume)
  }
  const flush = () => {
    if (!corked) return
    corked = false
    dst.uncork()
    // Only what the kernel did not take counts: a batch written in full needs no drain.
    if (dst.writableLength >= dst.writableHighWaterMark) backOff()
  }
  const onData = (chunk: Buffer) => {
    inFlight.push(chunk)
    if (opts.coalesceRecords && !corked && chunk.length >= TLS_RECORD) {
      corked = true
      dst.cork()
      setImmediate(flush)
    }
    if (corked) {
      dst.write(chunk, written)
      if (dst.writableLength >= dst.writableHighWaterMark) flush()
    } else if (!dst.write(chunk, written)) {
      backOff()
    }
  }
  const onEnd = () => {
    flush()
    dst.end()
  }
  const stop = () => {
    src.off('data', onData)
    src.off('end', onEnd)
    dst.off('drain', resume)
    dst.off('close', onClose)
    flush()
  }
  // Like pipe(): nothing more is read for a destination that has gone.
  const onClose = () => {
    stop()
    src.pause()
  }
  src.on('data', onData)
  src.once('end', onEnd)
  dst.once('close', onClose)
  // A 'data' listener alone does not restart a stream that was paused explicitly.
  src.resume()
  return stop
}
