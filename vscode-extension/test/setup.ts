/**
 * Import first in every test file: makes `require('vscode')` (ours and vscode-languageclient's) load test/vscode.ts.
 */
import Module = require('module');
import * as path from 'path';

const stub = path.join(__dirname, 'vscode.js');
type Resolve = (request: string, ...rest: unknown[]) => string;
const mod = Module as unknown as { _resolveFilename: Resolve };
const original = mod._resolveFilename;
if (!(original as { repocompleteStub?: boolean }).repocompleteStub) {
    const patched: Resolve = function (this: unknown, request, ...rest) {
        return request === 'vscode' ? stub : original.call(this, request, ...rest);
    };
    (patched as { repocompleteStub?: boolean }).repocompleteStub = true;
    mod._resolveFilename = patched;
}
