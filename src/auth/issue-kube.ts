import type { KubeCertRequest, KubeCertResponse } from '../api/types.ts'
import { issueLeaf } from '../pki/x509.ts'
import { MemidError } from '../core/errors.ts'
import { denied, unionOf } from './rbac.ts'
import type { IssueContext } from './issuer.ts'
import { resourceAuthority } from './cas.ts'

/**
 * A client certificate from the cluster's own client CA: CN = kube user, O = each kube
 * group, for a registered cluster the bot's roles grant. One role per certificate, as for
 * databases: the groups come only from roles that grant this cluster *and* this user, so
 * one role's groups never ride on another role's user (roles granting the same cluster
 * and user add their groups up).
 */
export async function issueKubeCertificate(ctx: IssueContext, req: KubeCertRequest): Promise<KubeCertResponse> {
  const cluster = await ctx.store.getResource('kube', req.cluster)
  if (cluster === undefined) throw new MemidError('ERR_NOT_FOUND', `kube cluster "${req.cluster}" is not registered (memid kube add)`)
  const granting = ctx.roles.filter((r) => r.kubeClusters.includes('*') || r.kubeClusters.includes(req.cluster))
  if (granting.length === 0) throw denied(`bot "${ctx.bot.name}" has no role granting kube cluster "${req.cluster}"`)
  const users = unionOf(granting, 'kubeUsers')
  if (req.user !== undefined && !users.includes(req.user)) throw denied(`kube user "${req.user}" is not granted to bot "${ctx.bot.name}"; allowed: ${users.join(', ') || 'none'}`)
  if (req.user === undefined) {
    if (users.length === 0) throw denied(`bot "${ctx.bot.name}" has no kube user for cluster "${req.cluster}" (roles add --kube-users)`)
    if (users.length > 1) throw denied(`bot "${ctx.bot.name}" may act as several kube users (${users.join(', ')}); name one`)
  }
  const user = req.user ?? (users[0] as string)
  const groups = unionOf(granting.filter((r) => r.kubeUsers.includes(user)), 'kubeGroups')
  const cert = await issueLeaf({
    ca: await resourceAuthority(ctx.store, 'kube', cluster.name), publicKey: ctx.publicKey, commonName: user, organizations: groups,
    ttlMs: ctx.ttlMs, usage: 'client', now: ctx.now,
  })
  return {
    certificate: cert.pem, serial: cert.serial, user, groups,
    notBefore: cert.notBefore.toISOString(), notAfter: cert.notAfter.toISOString(),
    upstream: { name: cluster.name, uri: cluster.uri, ...(cluster.caPem ? { caPem: cluster.caPem } : {}) },
  }
}
