// A real OpenID Connect provider on loopback for pgid's tests (panva/oidc-provider).
//
// Agents: CLIENT_ID/CLIENT_SECRET get JWT access tokens with audience "pgid" by the
// client-credentials grant (`pgid login`).
// Reviewers: with REVIEW_CLIENT_ID/REVIEW_CLIENT_SECRET/REVIEW_REDIRECT_URIS, pgid's approval page
// signs people in by the authorization-code flow through the provider's development sign-in form
// (any password); REVIEWERS maps a login to its claims, e.g. {"alice": {"groups": ["dba"]}}.
// Usage: PORT=… [CLIENT_ID=… CLIENT_SECRET=…] [REVIEW_…] [HOST=… ISSUER=…] node provider.mjs
// (HOST: the address to listen on, loopback by default; ISSUER: its public URL, used by
// deploy/compose, where it shares pgid's network namespace.)
import Provider from 'oidc-provider';

const env = process.env;
const port = Number(env.PORT);
const issuer = env.ISSUER || `http://127.0.0.1:${port}`;
const clients = [];
if (env.CLIENT_ID) {
  clients.push({
    client_id: env.CLIENT_ID,
    client_secret: env.CLIENT_SECRET,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  });
}
const reviewers = JSON.parse(env.REVIEWERS || '{}');
if (env.REVIEW_CLIENT_ID) {
  clients.push({
    client_id: env.REVIEW_CLIENT_ID,
    client_secret: env.REVIEW_CLIENT_SECRET,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: env.REVIEW_REDIRECT_URIS.split(','),
  });
}

const provider = new Provider(issuer, {
  clients,
  claims: { openid: ['sub'], profile: ['name'], groups: ['groups'] },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, name: id, groups: [], ...(reviewers[id] || {}) };
      },
    };
  },
  features: {
    devInteractions: { enabled: Boolean(env.REVIEW_CLIENT_ID) },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Agents' tokens are for pgid; reviewers' access tokens are for the userinfo endpoint.
      defaultResource: async (ctx, client) => (client.clientId === env.REVIEW_CLIENT_ID ? undefined : 'urn:pgid'),
      useGrantedResource: async () => true,
      getResourceServerInfo: async () => ({ audience: 'pgid', scope: 'db', accessTokenFormat: 'jwt' }),
    },
  },
});
provider.listen(port, env.HOST || '127.0.0.1', () => console.log(`ready ${issuer}`));
