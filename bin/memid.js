#!/usr/bin/env node
// The published entry point runs the compiled CLI (`npm install` builds it via `prepare`).
import { main } from '../dist/cli/main.js'

main(process.argv)
