// A real OpenID Connect provider on loopback for pgid's tests: client-credentials grant,
// JWT access tokens with audience "pgid". Usage: PORT=… CLIENT_ID=… CLIENT_SECRET=… node provider.mjs
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: process.env.CLIENT_ID,
    client_secret: process.env.CLIENT_SECRET,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  }],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => 'urn:pgid',
      useGrantedResource: async () => true,
      getResourceServerInfo: async () => ({ audience: 'pgid', scope: 'db', accessTokenFormat: 'jwt' }),
    },
  },
});
provider.listen(port, '127.0.0.1', () => console.log(`ready ${issuer}`));
