// Parses an AsyncAPI document with the AsyncAPI project's own parser (@asyncapi/parser, installed
// into <repo>/.tools/asyncapi by scripts/install-asyncapi-parser.sh) and prints its diagnostics
// as JSON on stdout: [{severity, code, message, path}], severity one of error, warning, info, hint.
//
// Usage: node scripts/asyncapi-validate.mjs FILE   (FILE "-" reads standard input)
// Exit status: 0 when there is no error and no warning, 1 when there is one, 2 when the document
// cannot be read or the parser is not installed.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
const tools = process.env.ASYNCAPI_TOOLS_DIR || join(repo, '.tools', 'asyncapi');
const require = createRequire(join(tools, 'package.json'));

const file = process.argv[2];
if (!file) {
  console.error('usage: node scripts/asyncapi-validate.mjs FILE');
  process.exit(2);
}

let Parser;
try {
  ({ Parser } = require('@asyncapi/parser'));
} catch (e) {
  console.error(`@asyncapi/parser is not installed in ${tools}: run scripts/install-asyncapi-parser.sh (${e.message})`);
  process.exit(2);
}

let text;
try {
  text = readFileSync(file === '-' ? 0 : file, 'utf8');
} catch (e) {
  console.error(`${file}: ${e.message}`);
  process.exit(2);
}

// Spectral's severities: 0 error, 1 warning, 2 information, 3 hint.
const SEVERITY = ['error', 'warning', 'info', 'hint'];
const { diagnostics } = await new Parser().parse(text);
const out = diagnostics.map((d) => ({
  severity: SEVERITY[d.severity] ?? String(d.severity),
  code: d.code,
  message: d.message,
  path: d.path.join('/'),
}));
console.log(JSON.stringify(out, null, 2));
process.exit(diagnostics.some((d) => d.severity <= 1) ? 1 : 0);
