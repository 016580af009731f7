/**
 * memid as a library: embed the agent in a Node program, or start an auth service.
 * The CLI (`memid`) is built on exactly these exports.
 */
export { startAgent, createAgent } from './agent/agent.ts'
export type { AgentHandle, AgentOptions, AgentRuntime, AgentStatus, AgentExit, ServiceStatus } from './agent/agent.ts'
export type { AgentConfig, AgentConfigOptions, Onboarding, ServiceConfig, ServiceOptions, TokenSource } from './config/agent.ts'
export { loadAgentConfig, resolveAgentOptions } from './config/agent.ts'
export { startAuthServer } from './auth/server.ts'
export type { AuthServer, AuthServerOptions } from './auth/server.ts'
export { SqliteStore } from './storage/sqlite.ts'
export { PostgresStore } from './storage/postgres.ts'
export type { PostgresStoreOptions } from './storage/postgres.ts'
export { openStore } from './storage/open.ts'
export type { Store } from './storage/store.ts'
export { AuthClient } from './agent/auth-client.ts'
export { MemidError, ConfigError } from './core/errors.ts'
export type { ErrorCode } from './core/errors.ts'
export { createLogger } from './core/log.ts'
export { VERSION } from './version.ts'
