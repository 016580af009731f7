import type { JoinMethodSpec } from './method.ts'

/** GitHub Actions: the job's OIDC token (`permissions: id-token: write`). GHES: `https://HOST/_services/token`. */
export const github: JoinMethodSpec = {
  method: 'github',
  defaultIssuer: 'https://token.actions.githubusercontent.com',
  identifying: ['repository', 'repository_owner', 'sub'],
  recorded: ['repository', 'workflow', 'ref', 'run_id'],
}
