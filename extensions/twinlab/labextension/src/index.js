// twinhub in JupyterLab (a prebuilt extension, installed with the environment):
// - a "twinhub" Launcher section with one card per platform tutorial, from the server's
//   GET twinlab/api/tutorials (twinlab.serverext.tutorials); a card opens the user's copy
//   in <root>/tutorials/, copying it back first if the user deleted it;
// - the platform's docs and support in the Help menu, served by the hub at
//   <hubPrefix>help/ and <hubPrefix>help/support (no internet needed);
// - "Service desk" in the Help menu, only where the platform runs the desk: the server's
//   GET twinlab/api/info lists it under "services" (the spawner's $TWINHUB_SERVICES, with
//   the platform's base URL); it opens the desk's page in a new browser tab;
// - warnings when a project's budget reaches 80 % or 95 % and an error at 100 % (with the
//   time its servers stop, when known) or when a server was stopped for a budget, once per
//   level per project and budget: it polls the server's GET twinlab/api/info, whose "usage"
//   key lists them (twinlab.serverext.usage_info).
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { IMainMenu } from '@jupyterlab/mainmenu';
import { ServerConnection } from '@jupyterlab/services';
import { notebookIcon } from '@jupyterlab/ui-components';

const CATEGORY = 'twinhub';
const OPEN_TUTORIAL = 'twinhub:open-tutorial';
const HELP_DOCS = 'twinhub:help-docs';
const HELP_SUPPORT = 'twinhub:help-support';
const HELP_DESK = 'twinhub:help-desk';
const OPEN_USAGE = 'twinhub:open-usage';
// JupyterLab's own command for a notification toast (no extra package needed)
const NOTIFY = 'apputils:notify';
const USAGE_POLL_MS = 60 * 1000;

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

async function info() {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'twinlab/api/info');
  const response = await ServerConnection.makeRequest(url, {}, settings);
  if (!response.ok) {
    throw new Error(`${url}: ${response.status}`);
  }
  return response.json();
}

// The desk's page on this page's origin: user servers are served on the platform's own
// origin, and the spawner's URL may name the host differently (a cookie would not follow).
function deskPath(url) {
  const u = new URL(url, window.location.href);
  return u.pathname + u.search;
}

const desk = {
  id: '@twinhub/lab:desk',
  description: 'The service desk in the Help menu, where the platform runs one.',
  autoStart: true,
  optional: [IMainMenu],
  activate: async (app, mainMenu) => {
    let url = null;
    try {
      const services = (await info()).services;
      url = services && typeof services.desk === 'string' ? services.desk : null;
    } catch (error) {
      console.warn('twinhub: service desk not looked up:', error);
    }
    if (url && mainMenu) {
      const path = deskPath(url);
      app.commands.addCommand(HELP_DESK, {
        label: 'Service desk',
        caption: 'Ask the support staff: tickets with answers by mail',
        execute: () => window.open(path, '_blank', 'noopener')
      });
      mainMenu.helpMenu.addGroup([{ command: HELP_DESK }], 1);
    }
    // Says the lookup is over (shown or not): what a browser test waits for.
    document.body.dataset.twinhubDesk = url && mainMenu ? 'shown' : 'none';
  }
};

function noticeText(n) {
  const text = n.message || `project ${n.project}: ${n.budget} at ${n.level} %`;
  if (n.kind !== 'stopped' && n.level >= 100 && n.stop_at) {
    // first: a toast shows only the start of a long message
    const at = new Date(n.stop_at);
    const when = at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    const sameDay = at.toDateString() === new Date().toDateString();
    return `Stopping at ${sameDay ? when : at.toLocaleString()}: ${text}`;
  }
  return text;
}

const usageNotices = {
  id: '@twinhub/lab:usage-notices',
  description: "Warnings when a project's budget is at 80 % or 95 %, an error when used up.",
  autoStart: true,
  activate: app => {
    const usagePage = URLExt.join(PageConfig.getBaseUrl(), 'usage/');
    app.commands.addCommand(OPEN_USAGE, {
      label: 'Usage',
      caption: 'Your usage, budgets left, energy and CO2e',
      execute: () => window.open(usagePage, '_blank', 'noopener')
    });
    // levels already shown, per "project/budget"; kept across reloads of this server's
    // JupyterLab so a level is shown once, forgotten when the budget drops below it
    const storeKey = `twinhub:usage-notices:${PageConfig.getBaseUrl()}`;
    let shown = {};
    try {
      shown = JSON.parse(window.localStorage.getItem(storeKey) || '{}') || {};
    } catch (error) {
      shown = {};
    }
    const poll = async () => {
      let usage;
      try {
        usage = (await info()).usage;
      } catch (error) {
        console.warn('twinhub: usage not read:', error);
        return;
      }
      if (!usage || usage.error || !Array.isArray(usage.notices)) {
        return;
      }
      const now = {};
      for (const n of usage.notices) {
        // a budget's level is shown once; each stop of a server once
        const key =
          n.kind === 'stopped'
            ? `stopped/${n.project}/${n.server || ''}/${n.at || ''}`
            : `${n.project}/${n.budget}`;
        const level = Number(n.level || 0);
        now[key] = level;
        if ((shown[key] || 0) >= level) {
          continue;
        }
        try {
          await app.commands.execute(NOTIFY, {
            message: noticeText(n),
            type: level >= 100 ? 'error' : 'warning',
            options: {
              autoClose: level >= 95 ? false : 30000,
              actions: [{ label: 'Open Usage', commandId: OPEN_USAGE }]
            }
          });
          shown[key] = level;
        } catch (error) {
          console.warn('twinhub: no notification shown:', error);
        }
      }
      for (const key of Object.keys(shown)) {
        if (!(key in now)) {
          delete shown[key];
        } else if (now[key] < shown[key]) {
          shown[key] = now[key];
        }
      }
      try {
        window.localStorage.setItem(storeKey, JSON.stringify(shown));
      } catch (error) {
        // private mode or full storage: levels are then remembered for this page only
      }
    };
    app.restored.then(poll);
    window.setInterval(poll, USAGE_POLL_MS);
  }
};

export default [tutorials, help, desk, usageNotices];
