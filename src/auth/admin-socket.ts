import { MemidError } from '../core/errors.ts'
import { Router, readJsonBody, sendJson } from '../core/http.ts'
import type { AdminService } from './admin.ts'
import type { ResourceKind } from '../storage/store.ts'

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

  r.on('GET', '/v1/bots', async (_q, res) => sendJson(res, 200, await admin.listBots()))
  r.on('POST', '/v1/bots', async (q, res) => sendJson(res, 201, await admin.addBot(await readJsonBody(q))))
  r.on('DELETE', '/v1/bots/:name', async (_q, res, p) => {
    await admin.removeBot(p.name as string)
    sendJson(res, 200, ok)
  })

  r.on('GET', '/v1/tokens', async (_q, res) => sendJson(res, 200, await admin.listTokens()))
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

  r.on('GET', '/v1/instances', async (_q, res, _p, query) => {
    const bot = query.get('bot')
    sendJson(res, 200, await admin.listInstances(bot ?? undefined))
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

  r.on('POST', '/v1/audit', async (q, res) => sendJson(res, 200, await admin.audit(await readJsonBody(q))))
  r.on('GET', '/v1/audit', () => {
    throw new MemidError('ERR_METHOD_NOT_ALLOWED', 'use POST /v1/audit with a JSON query')
  })
  return r
}
