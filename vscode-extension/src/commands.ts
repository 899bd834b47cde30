/**
 * The extension's commands: toggle completions, show the context of the last completion, restart the server.
 */
import * as path from 'path';
import * as vscode from 'vscode';
import { SECTION } from './settings';
import { RESTART_COMMAND, SHOW_CONTEXT_COMMAND, SHOW_LOG_COMMAND, TOGGLE_COMMAND } from './statusBar';

/** The server's command (workspace/executeCommand) that explains a completion. Same name as ours; see client.ts. */
export const SERVER_SHOW_CONTEXT = 'repocomplete.showContext';

/** What the commands need of the server manager. */
export interface ServerControl {
    readonly isRunning: boolean;
    restart(): Promise<void>;
    executeCommand<R>(command: string, args: unknown[], token?: vscode.CancellationToken): Promise<R>;
}

// ---- toggle ---------------------------------------------------------------------------------------------------

/**
 * Where a flip of `enabled` is written: the most specific scope that sets it now (so the flip wins), else the user's
 * settings (a toggle meant for every workspace).
 */
export function toggleTarget(inspected: {
    workspaceFolderValue?: unknown; workspaceValue?: unknown; globalValue?: unknown;
} | undefined): vscode.ConfigurationTarget {
    if (inspected?.workspaceFolderValue !== undefined) {
        return vscode.ConfigurationTarget.WorkspaceFolder;
    }
    if (inspected?.workspaceValue !== undefined) {
        return vscode.ConfigurationTarget.Workspace;
    }
    return vscode.ConfigurationTarget.Global;
}

/**
 * Flip `repocomplete.enabled`. The server hears of it through workspace/didChangeConfiguration (the language client
 * sends that on any change of the section), the status bar through the configuration listener.
 */
export async function toggle(): Promise<boolean> {
    const config = vscode.workspace.getConfiguration(SECTION, vscode.window.activeTextEditor?.document.uri);
    const now = config.get<boolean>('enabled', true) !== false;
    const target = toggleTarget(config.inspect<boolean>('enabled'));
    await config.update('enabled', !now, target);
    return !now;
}

// ---- show context -----------------------------------------------------------------------------------------------

export interface ContextRecord {
    path: string;
    start_line: number;
    end_line: number;
    kind: string;
    score: number;
    why: string;
    text: string;
}

export interface ShowContextResult {
    completion: string | null;
    records: ContextRecord[];
    prompt_tokens: number;
    timings_ms: Record<string, number>;
    context_mode?: string;
    stop_reason?: string | null;
    /** The workspace the records come from, and why that folder (null: no repository context). */
    root?: string | null;
    root_reason?: string | null;
    /** The repository context's tokens in the prompt, and the budget they were packed into (null without one). */
    context_tokens?: number | null;
    context_budget?: number | null;
    /** What bent the request: a budget reduced to fit the model's window. */
    notes?: string[];
}

export interface Where {
    uri: string;
    /** Zero-based, as in LSP. */
    position: { line: number; character: number };
    languageId?: string;
}

/** The arguments of the server's `repocomplete.showContext`: `[{uri, position: {line, character}}]`. */
export function showContextArguments(where: Where): unknown[] {
    return [{ uri: where.uri, position: { line: where.position.line, character: where.position.character } }];
}

const LANGUAGE_BY_EXTENSION: Record<string, string> = {
    '.py': 'python', '.pyi': 'python', '.js': 'javascript', '.mjs': 'javascript', '.cjs': 'javascript',
    '.jsx': 'javascriptreact', '.ts': 'typescript', '.mts': 'typescript', '.cts': 'typescript',
    '.tsx': 'typescriptreact', '.go': 'go', '.java': 'java', '.rs': 'rust', '.c': 'c', '.h': 'c', '.cpp': 'cpp',
    '.md': 'markdown', '.json': 'json', '.toml': 'toml', '.yaml': 'yaml', '.yml': 'yaml', '.sh': 'bash',
};

export function languageOf(file: string): string {
    return LANGUAGE_BY_EXTENSION[path.extname(file).toLowerCase()] ?? '';
}

/** A fenced code block that no run of backticks inside `text` can close. */
export function fence(text: string, language = ''): string {
    const longest = Math.max(2, ...[...text.matchAll(/`+/g)].map((m) => m[0].length));
    const ticks = '`'.repeat(longest + 1);
    return `${ticks}${language}\n${text.endsWith('\n') ? text : `${text}\n`}${ticks}`;
}

function num(v: unknown, digits: number): string {
    return typeof v === 'number' && Number.isFinite(v) ? v.toFixed(digits) : '?';
}

/** One line of text. Left unescaped: the document is read as source more than rendered, and a `why` may use `code`. */
function inline(text: string): string {
    return text.replace(/[\r\n]+/g, ' ');
}

/** A table cell. */
function cell(text: string): string {
    return inline(text).replace(/\|/g, '\\|');
}

/** An inline code span that holds `text` whatever backticks it has. */
function code(text: string): string {
    const one = inline(text);
    const longest = Math.max(0, ...[...one.matchAll(/`+/g)].map((m) => m[0].length));
    const ticks = '`'.repeat(longest + 1);
    return longest > 0 ? `${ticks} ${one} ${ticks}` : `${ticks}${one}${ticks}`;
}

function displayPath(file: string, where: Where): string {
    return file.startsWith('file://') ? decodeURIComponent(file.slice('file://'.length)) : file || where.uri;
}

/** The server's answer as a Markdown document: the completion, then each context record with its provenance. */
export function formatContext(result: ShowContextResult, where: Where): string {
    const lines: string[] = [];
    const records = Array.isArray(result.records) ? result.records : [];
    const file = displayPath(where.uri, where);
    lines.push('# repocomplete: context');
    lines.push('');
    const facts = [
        `${code(file)} line ${where.position.line + 1}, column ${where.position.character + 1}`,
        `${records.length} record${records.length === 1 ? '' : 's'}`,
        `${typeof result.prompt_tokens === 'number' ? result.prompt_tokens : '?'} prompt tokens`,
    ];
    if (typeof result.context_tokens === 'number' && typeof result.context_budget === 'number') {
        facts.push(`${result.context_tokens}/${result.context_budget} context tokens`);
    }
    if (result.context_mode) {
        facts.push(`context: ${inline(result.context_mode)}`);
    }
    if (result.stop_reason) {
        facts.push(`stop: ${inline(result.stop_reason)}`);
    }
    lines.push(facts.join(' · '));
    if (typeof result.root === 'string') {
        lines.push('');
        lines.push(`workspace ${code(result.root)}${result.root_reason ? ` (${inline(result.root_reason)})` : ''}`);
    }
    const notes = Array.isArray(result.notes) ? result.notes.filter((n) => typeof n === 'string') : [];
    for (const note of notes) {
        lines.push('');
        lines.push(`_Note: ${inline(note)}_`);
    }
    lines.push('');
    lines.push('## Completion');
    lines.push('');
    if (typeof result.completion === 'string') {
        lines.push(fence(result.completion, where.languageId ?? languageOf(file)));
    } else {
        lines.push('_No completion was made at this position; below is the context a completion here would use._');
    }
    const timings = result.timings_ms && typeof result.timings_ms === 'object' ? Object.entries(result.timings_ms) : [];
    if (timings.length > 0) {
        lines.push('');
        lines.push('## Timings');
        lines.push('');
        lines.push('| step | ms |');
        lines.push('| --- | ---: |');
        for (const [step, ms] of timings) {
            lines.push(`| ${cell(step)} | ${num(ms, 1)} |`);
        }
    }
    lines.push('');
    lines.push('## Context records');
    if (records.length === 0) {
        lines.push('');
        lines.push('_No context records._');
    }
    records.forEach((r, i) => {
        const span = r.start_line === r.end_line ? `line ${r.start_line}` : `lines ${r.start_line}–${r.end_line}`;
        lines.push('');
        lines.push(`### ${i + 1}. ${code(r.path)} ${span}`);
        lines.push('');
        lines.push(`kind **${inline(String(r.kind))}** · score ${num(r.score, 3)}${r.why ? ` · why: ${inline(r.why)}` : ''}`);
        lines.push('');
        lines.push(fence(typeof r.text === 'string' ? r.text : '', languageOf(r.path)));
    });
    lines.push('');
    return lines.join('\n');
}

/** Ask the server for the context at the active editor's cursor and open it beside the editor. */
export async function showContext(server: ServerControl): Promise<string | undefined> {
    const editor = vscode.window.activeTextEditor;
    if (editor === undefined) {
        void vscode.window.showInformationMessage('repocomplete: open a file and place the cursor where a completion was shown.');
        return undefined;
    }
    if (!server.isRunning) {
        void vscode.window.showWarningMessage('repocomplete: the server is not running.', 'Restart Server').then((pick) => {
            if (pick !== undefined) {
                void vscode.commands.executeCommand(RESTART_COMMAND);
            }
        });
        return undefined;
    }
    const where: Where = {
        uri: editor.document.uri.toString(),
        position: { line: editor.selection.active.line, character: editor.selection.active.character },
        languageId: editor.document.languageId,
    };
    let result: ShowContextResult;
    try {
        result = await server.executeCommand<ShowContextResult>(SERVER_SHOW_CONTEXT, showContextArguments(where));
    } catch (e) {
        void vscode.window.showErrorMessage(`repocomplete: show context failed: ${e instanceof Error ? e.message : String(e)}`);
        return undefined;
    }
    if (result === null || typeof result !== 'object') {
        void vscode.window.showInformationMessage('repocomplete: the server has no context for this position.');
        return undefined;
    }
    const content = formatContext(result, where);
    const doc = await vscode.workspace.openTextDocument({ language: 'markdown', content });
    await vscode.window.showTextDocument(doc, { viewColumn: vscode.ViewColumn.Beside, preview: true, preserveFocus: true });
    return content;
}

// ---- registration -----------------------------------------------------------------------------------------------

export function registerCommands(server: ServerControl, output: vscode.OutputChannel): vscode.Disposable[] {
    return [
        vscode.commands.registerCommand(TOGGLE_COMMAND, () => toggle()),
        vscode.commands.registerCommand(SHOW_CONTEXT_COMMAND, () => showContext(server)),
        vscode.commands.registerCommand(RESTART_COMMAND, () => server.restart()),
        vscode.commands.registerCommand(SHOW_LOG_COMMAND, () => output.show(true)),
    ];
}
