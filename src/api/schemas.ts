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
