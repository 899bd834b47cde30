/**
 * The status-bar item: a pure reducer (events -> state) and a pure view (state -> text, tooltip, command), plus a thin
 * class that applies the view to a `vscode.StatusBarItem`.
 *
 * Events come from the server's `repocomplete/status` notification, from `$/progress` (window/workDoneProgress) of
 * the indexing, from the language client's own state (starting, running, stopped) and from the `enabled` setting.
 */
import * as vscode from 'vscode';

export const TOGGLE_COMMAND = 'repocomplete.toggle';
export const SHOW_CONTEXT_COMMAND = 'repocomplete.showContext';
export const RESTART_COMMAND = 'repocomplete.restartServer';
export const SHOW_LOG_COMMAND = 'repocomplete.showLog';

/** The server's `repocomplete/status` notification. */
export const STATUS_NOTIFICATION = 'repocomplete/status';
export type ServerState = 'starting' | 'indexing' | 'ready' | 'error' | 'disabled';
export const SERVER_STATES: readonly ServerState[] = ['starting', 'indexing', 'ready', 'error', 'disabled'];

export interface StatusParams {
    state: ServerState;
    model?: string;
    message?: string;
    percentage?: number | null;
}

/** The value of a `$/progress` notification for work-done progress. */
export type ProgressValue =
    | { kind: 'begin'; title?: string; message?: string; percentage?: number }
    | { kind: 'report'; message?: string; percentage?: number }
    | { kind: 'end'; message?: string };

export type StatusEvent =
    | { kind: 'status'; params: StatusParams }
    | { kind: 'progress'; token: string | number; value: ProgressValue }
    | { kind: 'client'; state: 'starting' | 'running' | 'stopped'; message?: string }
    | { kind: 'enabled'; enabled: boolean }
    | { kind: 'model'; model: string };

export interface StatusState {
    /** What the server (or, before it speaks, the client) says it is doing. */
    phase: ServerState;
    /** The `enabled` setting as the client reads it (the status bar shows "off" at once when it is turned off). */
    enabled: boolean;
    model: string;
    message: string;
    /** Indexing in progress: from `$/progress` tokens or the server's `indexing` status. */
    indexing: { percentage: number | null; message: string } | null;
    /** The `$/progress` tokens that have begun and not ended. */
    progressTokens: (string | number)[];
}

export function initialState(model: string, enabled: boolean): StatusState {
    return { phase: 'starting', enabled, model, message: '', indexing: null, progressTokens: [] };
}

function clampPercentage(p: unknown): number | null {
    if (typeof p !== 'number' || !Number.isFinite(p)) {
        return null;
    }
    return Math.max(0, Math.min(100, Math.round(p)));
}

/** The next state. Pure; unknown or malformed events leave the state as it is. */
export function reduce(state: StatusState, event: StatusEvent): StatusState {
    switch (event.kind) {
        case 'status': {
            const p = event.params;
            if (!p || !SERVER_STATES.includes(p.state)) {
                return state;
            }
            const model = typeof p.model === 'string' && p.model !== '' ? p.model : state.model;
            const message = typeof p.message === 'string' ? p.message : '';
            let indexing = state.indexing;
            if (p.state === 'indexing') {
                indexing = { percentage: clampPercentage(p.percentage), message };
            } else if (state.progressTokens.length === 0) {
                indexing = null; // the server says it is done; $/progress, if any, says so by its `end`
            }
            return { ...state, phase: p.state, model, message, indexing };
        }
        case 'progress': {
            const v = event.value;
            const tokens = state.progressTokens.filter((t) => t !== event.token);
            if (v.kind === 'end') {
                if (tokens.length === state.progressTokens.length) {
                    return state; // not a token we saw begin
                }
                // The server follows its `end` with a status (ready, starting or error).
                return { ...state, progressTokens: tokens, indexing: tokens.length === 0 ? null : state.indexing };
            }
            if (v.kind === 'report' && tokens.length === state.progressTokens.length) {
                return state; // a report for a token that never began
            }
            const percentage = clampPercentage(v.percentage) ?? state.indexing?.percentage ?? null;
            return {
                ...state,
                progressTokens: [...tokens, event.token],
                indexing: { percentage, message: v.message ?? state.indexing?.message ?? '' },
            };
        }
        case 'client':
            if (event.state === 'running') {
                return state.phase === 'error' ? { ...state, phase: 'starting', message: '' } : state;
            }
            if (event.state === 'starting') {
                return { ...state, phase: 'starting', message: event.message ?? '', indexing: null, progressTokens: [] };
            }
            return {
                ...state,
                phase: 'error',
                message: event.message ?? 'the server is not running',
                indexing: null,
                progressTokens: [],
            };
        case 'enabled':
            return { ...state, enabled: event.enabled };
        case 'model':
            return { ...state, model: event.model };
    }
}

export interface StatusView {
    text: string;
    tooltip: string;
    command: string;
    /** 'error' and 'warning' map to the theme's status-bar background colours. */
    background: 'error' | 'warning' | null;
    /** The short name of what is shown: starting, indexing, ready, off, error. */
    shown: 'starting' | 'indexing' | 'ready' | 'off' | 'error';
}

/** What the status-bar item shows for a state. Pure. */
export function view(state: StatusState): StatusView {
    const detail = state.message ? `\n${state.message}` : '';
    if (state.phase === 'error') {
        return {
            shown: 'error',
            text: '$(error) repocomplete',
            tooltip: `repocomplete: error${detail}\nClick to restart the server.`,
            command: RESTART_COMMAND,
            background: 'error',
        };
    }
    if (!state.enabled || state.phase === 'disabled') {
        return {
            shown: 'off',
            text: '$(circle-slash) repocomplete: off',
            tooltip: `repocomplete is off (model ${state.model}).\nClick to turn completions on.`,
            command: TOGGLE_COMMAND,
            background: null,
        };
    }
    if (state.indexing !== null) {
        const pct = state.indexing.percentage;
        const msg = state.indexing.message ? `\n${state.indexing.message}` : '';
        return {
            shown: 'indexing',
            text: pct === null ? '$(sync~spin) repocomplete: indexing' : `$(sync~spin) repocomplete: indexing ${pct}%`,
            tooltip: `repocomplete: indexing the workspace${pct === null ? '' : ` (${pct}%)`}${msg}\n`
                + `Model ${state.model}. Click to turn completions off.`,
            command: TOGGLE_COMMAND,
            background: null,
        };
    }
    if (state.phase === 'indexing') {
        return {
            shown: 'indexing',
            text: '$(sync~spin) repocomplete: indexing',
            tooltip: `repocomplete: indexing the workspace${detail}\nModel ${state.model}. Click to turn completions off.`,
            command: TOGGLE_COMMAND,
            background: null,
        };
    }
    if (state.phase === 'starting') {
        return {
            shown: 'starting',
            text: '$(loading~spin) repocomplete',
            tooltip: `repocomplete: starting (model ${state.model})${detail}\nClick to turn completions off.`,
            command: TOGGLE_COMMAND,
            background: null,
        };
    }
    return {
        shown: 'ready',
        text: `$(sparkle) ${state.model}`,
        tooltip: `repocomplete: ready, model ${state.model}${detail}\nClick to turn completions off.`,
        command: TOGGLE_COMMAND,
        background: null,
    };
}

/** The subset of vscode.StatusBarItem we set. */
export interface StatusItem {
    text: string;
    tooltip: string | vscode.MarkdownString | undefined;
    command: string | vscode.Command | undefined;
    backgroundColor: vscode.ThemeColor | undefined;
    show(): void;
    dispose(): void;
}

/** Keeps a StatusBarItem in step with the state. */
export class StatusBar implements vscode.Disposable {
    private state: StatusState;

    constructor(private readonly item: StatusItem, model: string, enabled: boolean) {
        this.state = initialState(model, enabled);
        this.render();
        item.show();
    }

    get current(): StatusState {
        return this.state;
    }

    update(event: StatusEvent): void {
        const next = reduce(this.state, event);
        if (next !== this.state) {
            this.state = next;
            this.render();
        }
    }

    private render(): void {
        const v = view(this.state);
        this.item.text = v.text;
        this.item.tooltip = v.tooltip;
        this.item.command = v.command;
        this.item.backgroundColor = v.background === null
            ? undefined
            : new vscode.ThemeColor(v.background === 'error' ? 'statusBarItem.errorBackground' : 'statusBarItem.warningBackground');
    }

    dispose(): void {
        this.item.dispose();
    }
}
