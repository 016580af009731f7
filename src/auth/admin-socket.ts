import { MemidError } from '../core/errors.ts'
import { Router, readJsonBody, sendJson } from '../core/http.ts'
import type { ServerResponse } from 'node:http'
import { setImmediate as yieldToEventLoop } from 'node:timers/promises'
import type { AdminService } from './admin.ts'
import type { Page, PageRequest, ResourceKind } from '../storage/store.ts'

/**
 * Rows per store read while streaming a listing. One chunk of instance rows is read and
 * serialized in 1-5 ms on a busy 2-core machine, so the API's requests wait at most that
 * long behind a listing.
 */
export const LISTING_CHUNK = 100

/**
 * Streams one page of a listing as `{"items":[…],"next":"…"}`: the page is read in chunks
 * of LISTING_CHUNK, written as it comes (respecting backpressure), and the event loop is
 * yielded between chunks. Nothing holds more than one chunk in memory.
 */
async function streamPage<T>(res: ServerResponse, req: PageRequest, read: (req: PageRequest) => Promise<Page<T>>, json: (item: T) => string = JSON.stringify): Promise<void> {
  let remaining = req.limit
  let after = req.after
  let next: string | undefined
  let first = true
  let started = false
  try {
    while (remaining > 0) {
      const chunk = await read({ limit: Math.min(LISTING_CHUNK, remaining), ...(after !== undefined ? { after } : {}) })
      if (!started) {
        res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' })
        res.write('{"items":[')
        started = true
      }
      let text = ''
      for (const item of chunk.items) {
        text += (first ? '' : ',') + json(item)
        first = false
      }
      remaining -= chunk.items.length
      after = chunk.next
      next = chunk.next
      if (!res.write(text)) await new Promise((resolve) => res.once('drain', resolve))
      if (after === undefined || res.destroyed) break
      await yieldToEventLoop()
    }
  } catch (err) {
    // Once the head is out an error can only cut the body short; the client sees bad JSON.
    if (started) {
      res.destroy()
      return
    }
    throw err
  }
  res.end(`]${next !== undefined ? `,"next":${JSON.stringify(next)}` : ''}}`)
}

/**
 * Admin routes on the unix socket `<data-dir>/admin.sock` (0600: whoever can open it is
 * the cluster's administrator, as with a root-owned tctl).
 */
export function adminRouter(admin: AdminService): Router {
  const r = new Router()
  const ok = { ok: true }
  r.on('GET', '/v1/ping', (_q, res) => sendJson(res, 200, ok))

  r.on('GET', '/v1/roles', async (_q, res) => sendJson(res, 200, await admin.listRoles()))
  r.on('POST', '/v1/roles', async (q, res) => sendJson(res, 201, await admin.addRole(await readJsonBody(q))))
  r.on('DELETE', '/v1/roles/:name', async (_q, res, p) => {
    await admin.removeRole(p.name as string)
    sendJson(res, 200, ok)
  })

  r.on('GET', '/v1/bots', (_q, res, _p, query) => streamPage(res, admin.pageRequest(Object.fromEntries(query)), (p) => admin.pageBots(p)))
  r.on('POST', '/v1/bots', async (q, res) => sendJson(res, 201, await admin.addBot(await readJsonBody(q))))
  r.on('DELETE', '/v1/bots/:name', async (_q, res, p) => {
    await admin.removeBot(p.name as string)
    sendJson(res, 200, ok)
  })

  r.on('GET', '/v1/tokens', (_q, res, _p, query) => streamPage(res, admin.pageRequest(Object.fromEntries(query)), (p) => admin.pageTokens(p)))
  r.on('POST', '/v1/tokens', async (q, res) => sendJson(res, 201, await admin.addToken(await readJsonBody(q))))
  r.on('DELETE', '/v1/tokens/:name', async (_q, res, p) => {
    await admin.removeToken(p.name as string)
    sendJson(res, 200, ok)
  })

  for (const [path, kind] of [['kube', 'kube'], ['dbs', 'db']] as [string, ResourceKind][]) {
    r.on('GET', `/v1/${path}`, async (_q, res) => sendJson(res, 200, await admin.listResources(kind)))
    r.on('POST', `/v1/${path}`, async (q, res) => sendJson(res, 201, await admin.addResource(kind, await readJsonBody(q))))
    r.on('DELETE', `/v1/${path}/:name`, async (_q, res, p, query) => {
      await admin.removeResource(kind, p.name as string, query.get('keepCa') === 'true')
      sendJson(res, 200, ok)
    })
  }

  r.on('GET', '/v1/instances', (_q, res, _p, query) => {
    const { bot, ...page } = admin.instancePageRequest(Object.fromEntries(query))
    // Instances come as JSON text straight from their rows: no parse and stringify per instance.
    return streamPage(res, page, (p) => admin.pageInstancesJson({ ...p, ...(bot !== undefined ? { bot } : {}) }), (text) => text)
  })
  r.on('GET', '/v1/instances/:bot/:id', async (_q, res, p) => sendJson(res, 200, await admin.getInstance(p.bot as string, p.id as string)))

  r.on('GET', '/v1/locks', async (_q, res) => sendJson(res, 200, await admin.listLocks()))
  r.on('POST', '/v1/locks', async (q, res) => sendJson(res, 201, await admin.addLock(await readJsonBody(q))))
  r.on('DELETE', '/v1/locks/:id', async (_q, res, p) => {
    await admin.removeLock(p.id as string)
    sendJson(res, 200, ok)
  })

  // The client CAs are per resource: /v1/cas/kube-client/NAME, /v1/cas/db-client/NAME.
  for (const pattern of ['/v1/cas/:kind', '/v1/cas/:kind/:name']) {
    r.on('GET', pattern, async (_q, res, p) => {
      const text = await admin.exportCa(p.kind as string, p.name)
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) })
      res.end(text)
    })
  }

  r.on('POST', '/v1/sign-host', async (q, res) => sendJson(res, 200, await admin.signHost(await readJsonBody(q))))

  r.on('POST', '/v1/audit', async (q, res) => {
    const { since, type, bot, ...page } = admin.auditRequest(await readJsonBody(q))
    const filters = { ...(since !== undefined ? { since } : {}), ...(type !== undefined ? { type } : {}), ...(bot !== undefined ? { bot } : {}) }
    await streamPage(res, page, (p) => admin.pageAudit({ ...p, ...filters }))
  })
  r.on('GET', '/v1/audit', () => {
    throw new MemidError('ERR_METHOD_NOT_ALLOWED', 'use POST /v1/audit with a JSON query')
  })
  return r
}
