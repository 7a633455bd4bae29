// twinhub in JupyterLab (a prebuilt extension, installed with the environment):
// - a "twinhub" Launcher section with one card per platform tutorial, from the server's
//   GET twinlab/api/tutorials (twinlab.serverext.tutorials); a card opens the user's copy
//   in <root>/tutorials/, copying it back first if the user deleted it;
// - the platform's docs and support in the Help menu, served by the hub at
//   <hubPrefix>help/ and <hubPrefix>help/support (no internet needed).
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { IMainMenu } from '@jupyterlab/mainmenu';
import { ServerConnection } from '@jupyterlab/services';
import { notebookIcon } from '@jupyterlab/ui-components';

const CATEGORY = 'twinhub';
const OPEN_TUTORIAL = 'twinhub:open-tutorial';
const HELP_DOCS = 'twinhub:help-docs';
const HELP_SUPPORT = 'twinhub:help-support';

async function api(path, init) {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'twinlab/api/tutorials', path);
  const response = await ServerConnection.makeRequest(url, init || {}, settings);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body.message || `${url}: ${response.status}`);
  }
  return body;
}

const tutorials = {
  id: '@twinhub/lab:tutorials',
  description: "The platform's tutorials in the Launcher.",
  autoStart: true,
  optional: [ILauncher],
  activate: async (app, launcher) => {
    app.commands.addCommand(OPEN_TUTORIAL, {
      label: args => args.title || args.name || 'twinhub tutorial',
      // the card's title attribute: what a person (or a browser test) finds it by
      caption: args => `twinhub tutorial: ${args.name}`,
      icon: notebookIcon,
      execute: async args => {
        // POST copies the tutorial back if the user deleted it; never overwrites
        const entry = await api(encodeURIComponent(args.name), { method: 'POST' });
        return app.commands.execute('docmanager:open', { path: entry.path });
      }
    });
    if (!launcher) {
      return;
    }
    let listing;
    try {
      listing = await api('');
    } catch (error) {
      console.warn('twinhub: no tutorials listed:', error);
      return;
    }
    listing.tutorials
      .filter(t => t.path)
      .forEach((t, rank) => {
        launcher.add({
          command: OPEN_TUTORIAL,
          args: { name: t.name, title: t.title },
          category: CATEGORY,
          rank
        });
      });
  }
};

const help = {
  id: '@twinhub/lab:help',
  description: "The platform's docs and support in the Help menu.",
  autoStart: true,
  optional: [IMainMenu],
  activate: (app, mainMenu) => {
    // set by jupyterhub-singleuser: '/hub/' (or '<base>/hub/'); absent outside a hub
    const hubPrefix = PageConfig.getOption('hubPrefix');
    if (!hubPrefix || !mainMenu) {
      return;
    }
    const open = path => () => window.open(URLExt.join(hubPrefix, path), '_blank', 'noopener');
    app.commands.addCommand(HELP_DOCS, {
      label: 'twinhub Documentation',
      caption: "The platform's documentation, served by the hub",
      execute: open('help/')
    });
    app.commands.addCommand(HELP_SUPPORT, {
      label: 'twinhub Support',
      caption: 'Ask for help with the platform',
      execute: open('help/support')
    });
    mainMenu.helpMenu.addGroup([{ command: HELP_DOCS }, { command: HELP_SUPPORT }], 0);
  }
};

export default [tutorials, help];
