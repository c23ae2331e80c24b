// The login screen: password login, registration, and SMS code login.

import { $, setLoginMode, loginError, loginInfo } from './views.js';

const USERNAME = /^[A-Za-z0-9_]{3,20}$/;
const PHONE = /^(1[3-9]\d{9}|\+[1-9]\d{6,14})$/;

function authSentence(e, mode) {
  switch (e.code) {
    case 'unauthorized':
      return mode === 'sms' ? 'That code is wrong or has expired.' : 'Wrong username or password.';
    case 'conflict':
      return 'That username is taken. Pick another one.';
    case 'forbidden':
      return 'This account is disabled.';
    case 'rate_limited':
      return `Too many attempts. Try again in ${e.retryAfter || 'a few'} s.`;
    case 'network_error':
      return 'The server cannot be reached. Check your connection.';
    default:
      return e.message || 'Something went wrong. Please try again.';
  }
}

/**
 * @param {import('./api.js').Api} api
 * @param {{entered: () => void}} hooks  called once logged in
 */
export function bindLogin(api, hooks) {
  let mode = 'login';
  setLoginMode(mode);

  $('tab-password').addEventListener('click', () => setLoginMode((mode = 'login')));
  $('tab-sms').addEventListener('click', () => setLoginMode((mode = 'sms')));
  $('register-toggle').addEventListener('click', () => {
    mode = mode === 'register' ? 'login' : 'register';
    setLoginMode(mode);
    $('login-username').focus();
  });

  const busy = (form, on) => {
    for (const b of form.querySelectorAll('button')) b.disabled = on;
    form.setAttribute('aria-busy', String(on));
  };

  $('password-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const form = ev.currentTarget;
    const username = $('login-username').value.trim();
    const password = $('login-password').value;
    const register = mode === 'register';
    if (register && !USERNAME.test(username)) {
      loginError('A username is 3 to 20 letters, digits or _.');
      $('login-username').focus();
      return;
    }
    if (!username || password.length < (register ? 8 : 1)) {
      loginError(register ? 'A password has at least 8 characters.' : 'Enter your username and password.');
      return;
    }
    loginError('');
    busy(form, true);
    try {
      if (register) await api.register(username, password, $('login-nickname').value.trim());
      else await api.login(username, password);
      $('login-password').value = '';
      loginInfo('');
      hooks.entered();
    } catch (e) {
      loginError(authSentence(e, mode));
    } finally {
      busy(form, false);
    }
  });

  let countdown = null;
  $('sms-send').addEventListener('click', async () => {
    const phone = $('login-phone').value.trim();
    if (!PHONE.test(phone)) {
      loginError('Enter a mainland mobile number (11 digits) or an international one (+…).');
      $('login-phone').focus();
      return;
    }
    loginError('');
    const btn = $('sms-send');
    btn.disabled = true;
    try {
      await api.smsSend(phone);
      loginInfo('A code is on its way.');
      $('login-code').focus();
      let left = 60;
      btn.textContent = `Resend (${left})`;
      clearInterval(countdown);
      countdown = setInterval(() => {
        left -= 1;
        if (left <= 0) {
          clearInterval(countdown);
          btn.disabled = false;
          btn.textContent = 'Send code';
        } else {
          btn.textContent = `Resend (${left})`;
        }
      }, 1000);
    } catch (e) {
      btn.disabled = false;
      loginError(authSentence(e, 'sms'));
    }
  });

  $('sms-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const form = ev.currentTarget;
    const phone = $('login-phone').value.trim();
    const code = $('login-code').value.trim();
    if (!PHONE.test(phone) || !code) {
      loginError('Enter your phone number and the code you received.');
      return;
    }
    loginError('');
    busy(form, true);
    try {
      await api.smsLogin(phone, code);
      $('login-code').value = '';
      loginInfo('');
      hooks.entered();
    } catch (e) {
      loginError(authSentence(e, 'sms'));
    } finally {
      busy(form, false);
      // The resend countdown keeps its own button state.
      if (countdown) $('sms-send').disabled = $('sms-send').textContent.startsWith('Resend');
    }
  });
}
