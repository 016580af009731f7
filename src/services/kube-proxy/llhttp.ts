/**
 * llhttp, the HTTP/1.1 parser inside Node, as Node's own http server and client drive it.
 *
 * Node does not document it: it is `HTTPParser` of the builtin `_http_common`, the same
 * object `lib/_http_server.js` and `lib/_http_client.js` use. The kube proxy uses it to
 * frame the bytes it passes through rather than write a parser of its own: requests are
 * read exactly as Node's server reads them (the same smuggling refusals: Content-Length
 * with Transfer-Encoding, differing or repeated Content-Length, bare LF, a transfer coding
 * other than a final `chunked`). Checked on Node 24.x (the engines range);
 * test/unit/services/kube-proxy-llhttp.test.ts pins every part of the API used here, so a
 * Node upgrade that changes it fails there first.
 */

/** The callback slots and constants of Node's `HTTPParser` that the proxy uses. */
export interface LlhttpParserClass {
  new (): LlhttpParser
  readonly REQUEST: number
  readonly RESPONSE: number
  readonly kOnHeaders: number
  readonly kOnHeadersComplete: number
  readonly kOnBody: number
  readonly kOnMessageComplete: number
  readonly kLenientNone: number
}

/**
 * `(versionMajor, versionMinor, headers, method, url, statusCode, statusMessage, upgrade,
 * shouldKeepAlive)`. `headers` and `url` are undefined when they were handed over in
 * pieces through `kOnHeaders` first (more than 32 header lines). The return value tells
 * llhttp what follows: 0 the body as framed, 1 no body (a response to HEAD), 2 the rest is
 * another protocol (an upgrade); -1 fails the parse.
 */
export type OnHeadersComplete = (
  major: number, minor: number, headers: string[] | undefined, method: number, url: string | undefined,
  status: number, statusMessage: string | undefined, upgrade: boolean, keepAlive: boolean,
) => number

export interface LlhttpParser {
  /** `resource` is the async-hooks resource Node's C++ side attaches to (any object). */
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void
  /** Bytes consumed, or an Error with `code` (`HPE_…`) and `bytesParsed`. */
  execute(data: Buffer): number | ParseError
  /** End of input: completes a message delimited by the end of the connection. */
  finish(): undefined | ParseError
  /** Frees the native parser; never call it from inside one of its callbacks. */
  close(): void
  [slot: number]: unknown
}

export interface ParseError extends Error {
  code: string
  bytesParsed: number
}

interface HttpCommon {
  HTTPParser: LlhttpParserClass
  methods: readonly string[]
}

const common = process.getBuiltinModule('_http_common') as unknown as HttpCommon

/** Node's `HTTPParser` (llhttp). */
export const HTTPParser: LlhttpParserClass = common.HTTPParser

/** Method names by the index llhttp reports. */
export const methods: readonly string[] = common.methods
