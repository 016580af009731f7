import type { KubeCertRequest, KubeCertResponse } from '../api/types.ts'
import { issueLeaf } from '../pki/x509.ts'
import { MemidError } from '../core/errors.ts'
import { allows, denied, unionOf } from './rbac.ts'
import type { IssueContext } from './issuer.ts'

/**
 * A client certificate from the `kube-client` CA: CN = kube user, O = each kube group,
 * for a registered cluster the bot's roles grant.
 */
export async function issueKubeCertificate(ctx: IssueContext, req: KubeCertRequest): Promise<KubeCertResponse> {
  const cluster = await ctx.store.getResource('kube', req.cluster)
  if (cluster === undefined) throw new MemidError('ERR_NOT_FOUND', `kube cluster "${req.cluster}" is not registered (memid kube add)`)
  if (!allows(ctx.roles, 'kubeClusters', req.cluster)) {
    throw denied(`bot "${ctx.bot.name}" has no role granting kube cluster "${req.cluster}"`)
  }
  const users = unionOf(ctx.roles.filter((r) => r.kubeClusters.includes('*') || r.kubeClusters.includes(req.cluster)), 'kubeUsers')
  let user = req.user
  if (user !== undefined && !users.includes(user)) throw denied(`kube user "${user}" is not granted to bot "${ctx.bot.name}"; allowed: ${users.join(', ') || 'none'}`)
  if (user === undefined) {
    if (users.length === 0) throw denied(`bot "${ctx.bot.name}" has no kube user for cluster "${req.cluster}" (roles add --kube-users)`)
    if (users.length > 1) throw denied(`bot "${ctx.bot.name}" may act as several kube users (${users.join(', ')}); name one`)
    user = users[0] as string
  }
  const groups = unionOf(ctx.roles.filter((r) => r.kubeClusters.includes('*') || r.kubeClusters.includes(req.cluster)), 'kubeGroups')
  const cert = await issueLeaf({
    ca: ctx.cas.kubeClient, publicKey: ctx.publicKey, commonName: user, organizations: groups,
    ttlMs: ctx.ttlMs, usage: 'client', now: ctx.now,
  })
  return {
    certificate: cert.pem, serial: cert.serial, user, groups,
    notBefore: cert.notBefore.toISOString(), notAfter: cert.notAfter.toISOString(),
    upstream: { name: cluster.name, uri: cluster.uri, ...(cluster.caPem ? { caPem: cluster.caPem } : {}) },
  }
}
