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

/** Chunks smaller than this are not worth a write callback to release their memory. */
const RELEASE_MIN = 4096

/**
 * Reads of a TLS socket that Node dials itself (`tls.connect` without `socket:`), taken
 * through `onread` into a buffer this object owns instead of through the socket's Readable
 * side. Per chunk that saves the buffer Node allocates for every read (a malloc and an
 * ArrayBuffer), the Readable's push, buffering and 'data' event, and its read-ahead tick
 * (with the small-chunk rule in relay(), ~17% fewer instructions per 64 B round trip
 * through the tunnel, counted with callgrind).
 *
 * The buffer is reused only when the chunk read into it left no reference behind: the
 * relay wrote it and the destination took it at once (nothing in its queue), so the next
 * read may overwrite it. A chunk the destination queued (backpressure, a partial write, a
 * corked batch) keeps its buffer and the next read gets a new one.
 *
 * Pass `onread` to `tls.connect` and the same object to `relay()` as `reads`. What arrives
 * before the relay is attached (a server that speaks first) is copied and held, and
 * reading pauses until then.
 */
export class DirectReads {
  #buffer = Buffer.allocUnsafeSlow(TLS_RECORD)
  #sink: ((chunk: Buffer) => boolean) | undefined
  readonly #early: Buffer[] = []

  /** For `tls.connect`'s `onread` option. */
  readonly onread = {
    buffer: () => this.#buffer,
    callback: (n: number, buf: Uint8Array): boolean => {
      const chunk = Buffer.from(buf.buffer, buf.byteOffset, n)
      if (this.#sink === undefined) {
        this.#early.push(Buffer.from(chunk))
        return false
      }
      // Runs before `buffer()` picks the buffer for the next read.
      if (!this.#sink(chunk)) this.#buffer = Buffer.allocUnsafeSlow(TLS_RECORD)
      return true
    },
  }

  /**
   * Hands every chunk to `sink`, first those held so far; `sink` answers whether the
   * chunk's buffer is free again (false: it was kept, so it must not be overwritten).
   */
  attach(sink: (chunk: Buffer) => boolean): Buffer[] {
    this.#sink = sink
    return this.#early.splice(0)
  }
}

/**
 * Copies `src` to `dst` with backpressure and ends `dst` when `src` ends, as `pipe()`
 * does; returns a function that stops the copy. With `reads`, `src` is a TLS socket made
 * with that object's `onread`, and chunks come from there instead of 'data' events.
 *
 * Every chunk a socket delivers is a fresh buffer whose memory lives outside V8's heap.
 * V8 frees that memory only when it collects the small object that owns it, and it
 * counts the total: at hundreds of MB/s the count crosses V8's external-memory limit
 * several times a second, and each crossing forces a full mark-compact of the whole heap
 * (a perf profile of the tunnel showed ~17% of its time in GC). So once a chunk has been
 * written — handed to the kernel, or encrypted by OpenSSL into its own buffers — and only
 * if the chunk owns its whole buffer (so no other view can see it), the buffer is detached,
 * which releases its memory at once and takes it off V8's count. Only chunks of at least
 * 4 KiB: for the small ones of an interactive session the count hardly moves, and a write
 * without a callback costs Node no tick. Write callbacks run in order, so one shared
 * callback and a queue of the chunks in flight are enough.
 */
export function relay(src: Readable, dst: Writable, opts: RelayOptions & { reads?: DirectReads }): () => void {
  const inFlight: (Buffer | undefined)[] = []
  const written = (err?: Error | null) => {
    const chunk = inFlight.shift()
    if (chunk !== undefined && !err) (chunk.buffer as Transferable).transfer(0)
  }
  let corked = false
  let waiting = false
  let stopped = false
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
  /** Writes a chunk; with `release`, a callback that detaches its buffer once written is queued (and the chunk must be pushed on `inFlight`). */
  const write = (chunk: Buffer, release: boolean) => {
    const cb = release ? written : undefined
    if (opts.coalesceRecords && !corked && chunk.length >= TLS_RECORD) {
      corked = true
      dst.cork()
      setImmediate(flush)
    }
    if (corked) {
      dst.write(chunk, cb)
      if (dst.writableLength >= dst.writableHighWaterMark) flush()
    } else if (!dst.write(chunk, cb)) {
      backOff()
    }
  }
  const onData = (chunk: Buffer) => {
    const release = chunk.length >= RELEASE_MIN && chunk.byteOffset === 0 && chunk.length === chunk.buffer.byteLength
    write(chunk, release)
    if (release) inFlight.push(chunk)
  }
  // A direct read's buffer is the reader's to reuse unless the destination kept the chunk;
  // a kept one is this chunk's alone (the reader moved on), so it may be released once
  // written. Write callbacks never run before write() returns, so the queue is filled after.
  const onDirect = (chunk: Buffer): boolean => {
    if (stopped) return true
    const release = chunk.length >= RELEASE_MIN
    write(chunk, release)
    const free = dst.writableLength === 0
    if (release) inFlight.push(free ? undefined : chunk)
    return free
  }
  const onEnd = () => {
    flush()
    dst.end()
  }
  const stop = () => {
    stopped = true
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
  src.once('end', onEnd)
  dst.once('close', onClose)
  if (opts.reads !== undefined) {
    // Held chunks are copies, owned by nobody else.
    for (const chunk of opts.reads.attach(onDirect)) onData(chunk)
    // Reads go on before the relay is attached, so the end may have come already.
    if (src.readableEnded) onEnd()
  } else {
    src.on('data', onData)
  }
  // A 'data' listener alone does not restart a stream that was paused explicitly.
  src.resume()
  return stop
}
