import { z } from 'zod'
import { durationSchema, nameSchema, principalSchema } from '../core/validate.ts'

const pem = z.string().min(1).max(8192)

/** Edge schemas for the agent-facing API. `strict`: unknown fields are refused. */
export const joinSchema = z.discriminatedUnion('joinMethod', [
  z.strictObject({
    joinMethod: z.literal('token'),
    token: z.string().min(1).max(512),
    publicKey: pem,
    ttl: durationSchema.optional(),
  }),
  z.strictObject({
    joinMethod: z.enum(['github', 'gitlab', 'kubernetes', 'oidc']),
    tokenName: nameSchema,
    idToken: z.string().min(1).max(16_384),
    publicKey: pem,
    ttl: durationSchema.optional(),
  }),
])

export const renewSchema = z.strictObject({
  publicKey: pem,
  ttl: durationSchema.optional(),
})

const shortText = z.string().max(256)

export const heartbeatSchema = z.strictObject({
  hostname: shortText,
  version: shortText,
  os: shortText,
  arch: shortText,
  uptimeSeconds: z.number().nonnegative().max(1e10),
  services: z.array(z.strictObject({ name: shortText, type: shortText, address: shortText, status: shortText })).max(64),
})

export const sshCertSchema = z.strictObject({
  publicKey: pem,
  ttl: durationSchema.optional(),
  principals: z.array(principalSchema).min(1).max(64).optional(),
})

export const kubeCertSchema = z.strictObject({
  publicKey: pem,
  cluster: nameSchema,
  ttl: durationSchema.optional(),
  user: principalSchema.optional(),
})

export const dbCertSchema = z.strictObject({
  publicKey: pem,
  service: nameSchema,
  username: principalSchema,
  database: principalSchema.optional(),
  ttl: durationSchema.optional(),
})

// Answers, as the agent's client checks them. Not strict: a newer server may add fields,
// which are dropped; a missing or mistyped field is an ERR_AUTH_BAD_RESPONSE.
const answerPem = z.string().min(1).max(65_536)
const time = z.string().refine((s) => !Number.isNaN(Date.parse(s)), 'must be an ISO-8601 time')
const text = z.string().max(1024)

export const casResponseSchema = z.object({ clusterName: text, tls: answerPem, sshHost: z.string().max(8192), sshUser: z.string().max(8192) })

export const identityResponseSchema = z.object({
  certificate: answerPem, bot: text, instanceId: text, generation: z.number().int().nonnegative(), serial: text, notBefore: time, notAfter: time,
})

export const heartbeatResponseSchema = z.object({ generation: z.number().int().nonnegative() })

export const joinTokenInfoSchema = z.object({ name: text, joinMethod: text, audience: text })

export const sshCertResponseSchema = z.object({
  certificate: answerPem, serial: text, keyId: text, principals: z.array(text).max(256), notBefore: time, notAfter: time,
})

const upstreamInfoSchema = z.object({ name: text, uri: text, caPem: answerPem.optional() })

export const kubeCertResponseSchema = z.object({
  certificate: answerPem, serial: text, user: text, groups: z.array(text).max(256), notBefore: time, notAfter: time, upstream: upstreamInfoSchema,
})

export const dbCertResponseSchema = z.object({
  certificate: answerPem, serial: text, user: text, notBefore: time, notAfter: time, upstream: upstreamInfoSchema,
})
