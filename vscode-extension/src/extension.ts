/**
 * The extension's lifecycle only: make the output channel, status bar, server manager and commands, connect them,
 * and start the server. The behaviour lives in settings.ts, statusBar.ts, client.ts and commands.ts.
 */
import * as vscode from 'vscode';
import { ServerManager } from './client';
import { registerCommands } from './commands';
import { needsRestart, readSettings, SECTION } from './settings';
import { RESTART_COMMAND, StatusBar } from './statusBar';

let manager: ServerManager | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
    const config = () => vscode.workspace.getConfiguration(SECTION);
    const settings = () => readSettings(config());
    const output = vscode.window.createOutputChannel('repocomplete', { log: true });

    const initial = settings();
    const status = new StatusBar(
        vscode.window.createStatusBarItem('repocomplete.status', vscode.StatusBarAlignment.Right, 100),
        initial.server.endpoint ?? initial.server.model,
        initial.server.enabled,
    );
    manager = new ServerManager({
        output,
        readSettings: settings,
        config,
        onStatus: (event) => status.update(event),
        onStartFailed: (message) => {
            void vscode.window.showErrorMessage(`repocomplete: ${message}`, 'Open Settings', 'Restart Server').then((pick) => {
                if (pick === 'Open Settings') {
                    void vscode.commands.executeCommand('workbench.action.openSettings', `${SECTION}.serverPath`);
                } else if (pick === 'Restart Server') {
                    void vscode.commands.executeCommand(RESTART_COMMAND);
                }
            });
        },
    });

    context.subscriptions.push(
        output,
        status,
        manager,
        ...registerCommands(manager, output),
        vscode.workspace.onDidChangeConfiguration((event) => {
            if (!event.affectsConfiguration(SECTION)) {
                return;
            }
            const now = settings();
            status.update({ kind: 'enabled', enabled: now.server.enabled });
            for (const problem of now.problems) {
                output.warn(problem);
            }
            if (needsRestart((section) => event.affectsConfiguration(section))) {
                void manager?.restart();
            }
        }),
    );

    void manager.start(); // not awaited: activation must not wait for the server
}

export async function deactivate(): Promise<void> {
    const m = manager;
    manager = undefined;
    await m?.stop();
}
