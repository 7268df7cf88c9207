import sys, time, random, http.client, threading
from collections import Counter
port=int(sys.argv[1]); n=int(sys.argv[2]); res=Counter()
def w(seed):
    rnd=random.Random(seed)
    for i in range(n):
        c=http.client.HTTPConnection('127.0.0.1',port,timeout=5)
        m=rnd.choice(['GET','POST'])
        try:
            c.request(m,'/',body=b'x' if m=='POST' else None,headers={'Host':'mesh.test'}); r=c.getresponse(); r.read(); res[(m,r.status)]+=1
        except Exception as e: res[(m,type(e).__name__)]+=1
        c.close(); time.sleep(rnd.uniform(1.7,2.6))
ts=[threading.Thread(target=w,args=(k,)) for k in range(3)]
[t.start() for t in ts]; [t.join() for t in ts]
print(sorted(res.items()))
